"""The vmap path over tasks gives the same meta-gradients as the per-task loop."""

from __future__ import annotations

import pytest
import torch

import metafit as mf
from metafit.algorithms import ANIL, FOMAML, MAML, MetaSGD, ProtoNet, Reptile
from metafit.execution import Execution, meta_gradients, runs_batched


def regression_batch(t: int = 4) -> mf.Episodes:
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.rand(t, 6, 1, generator=g) * 10 - 5, torch.rand(t, 7, 1, generator=g) * 10 - 5
    amp = torch.rand(t, 1, 1, generator=g) * 4 + 0.5
    return mf.Episodes(sx, amp * torch.sin(sx), qx, amp * torch.sin(qx))


def classification_batch(t: int = 3) -> mf.Episodes:
    g = torch.Generator().manual_seed(1)
    y_s, y_q = torch.arange(3).repeat(t, 2), torch.arange(3).repeat(t, 3)  # [T, 6], [T, 9]
    return mf.Episodes(torch.randn(t, 6, 5, generator=g) + y_s.unsqueeze(-1), y_s,
                       torch.randn(t, 9, 5, generator=g) + y_q.unsqueeze(-1), y_q)


MAKERS = {
    "maml": lambda m, b: MAML(m, inner_lr=0.05, inner_steps=2, batching=b),
    "fomaml": lambda m, b: FOMAML(m, inner_lr=0.05, inner_steps=2, batching=b),
    "maml_lslr": lambda m, b: MAML(m, inner_lr=0.05, inner_steps=2, lslr=True, batching=b),
    "metasgd": lambda m, b: MetaSGD(m, inner_lr=0.05, inner_steps=2, batching=b),
    "anil": lambda m, b: ANIL(m, inner_lr=0.05, inner_steps=2, batching=b),
}


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("name", list(MAKERS))
def test_vmap_equals_loop(name: str, task: str) -> None:
    torch.manual_seed(0)
    if task == "regression":
        model, eps = mf.models.mlp(1, 1, 16, 2), regression_batch()
    else:
        model, eps = mf.models.mlp(5, 3, 16, 2), classification_batch()
    loop, vmapped = MAKERS[name](model, "loop"), MAKERS[name](model, "vmap")
    assert not loop.runs_batched() and vmapped.runs_batched()
    g_loop, m_loop = loop.meta_gradients(eps)
    g_vmap, m_vmap = vmapped.meta_gradients(eps)
    assert g_loop.keys() == g_vmap.keys()
    for key in g_loop:
        assert torch.allclose(g_loop[key], g_vmap[key], rtol=1e-4, atol=1e-6), key
    assert any(float(g.abs().max()) > 0 for g in g_vmap.values())
    for key in m_loop:
        assert m_loop[key] == pytest.approx(m_vmap[key], rel=1e-5)


def test_auto_picks_vmap_for_mlps_and_the_loop_for_convolutions() -> None:
    assert MAML(mf.models.mlp(1, 1, 8, 1)).runs_batched()
    assert not MAML(mf.models.conv4(5, 1, 4, 8, 2)).runs_batched()
    with pytest.raises(ValueError, match="batching must be"):
        MAML(mf.models.mlp(), batching="fast")


def test_auto_batches_convolutions_off_the_cpu_where_vmap_can_run() -> None:
    # The "meta" device stands in for a GPU: the choice reads only the parameters' device.
    conv = mf.models.conv4(5, 1, 4, 28).to("meta")
    assert MAML(conv).runs_batched() and ANIL(conv).runs_batched()
    assert MAML(mf.models.conv4(5, 1, 4, 28, strided=True).to("meta")).runs_batched()
    native = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                                 torch.nn.Flatten(), torch.nn.LazyLinear(2)).to("meta")
    assert not MAML(native).runs_batched()  # its fused BatchNorm is wrong twice under vmap
    assert FOMAML(native).runs_batched()  # first order is fine
    marked = mf.models.mlp(1, 1, 8, 1).to("meta")
    marked.head.per_task_only = True
    assert not MAML(marked).runs_batched()
    assert not MAML(mf.models.conv4(5, 1, 4, 28)).runs_batched()  # on the CPU: the loop
    assert not MAML(conv, batching="loop").runs_batched()


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine", "cosine_learned"])
@pytest.mark.parametrize("strided", [False, True])
def test_protonet_batched_path_equals_the_per_task_loop(distance: str, strided: bool) -> None:
    # the GPU's path (one vmap over the tasks), forced here on the CPU in float64
    g = torch.Generator().manual_seed(2)
    t, n = 3, 3
    sy, qy = torch.arange(n).repeat(t, 2), torch.arange(n).repeat(t, 3)  # [T, 6], [T, 9]
    eps = mf.Episodes(torch.rand(t, 6, 1, 28, 28, generator=g, dtype=torch.float64), sy,
                      torch.rand(t, 9, 1, 28, 28, generator=g, dtype=torch.float64), qy,
                      torch.arange(n).repeat(t, 1))
    algo = ProtoNet(mf.models.conv4(None, 1, 8, 28, strided=strided).double(),
                    distance=distance.removesuffix("_learned"),
                    learn_scale=distance.endswith("_learned"))
    assert not algo.runs_batched()  # on the CPU: task by task
    assert ProtoNet(mf.models.conv4(None, 1, 8, 28).to("meta")).runs_batched()
    g_loop, m_loop = algo.meta_gradients(eps)
    forced = Execution(batching="vmap")
    assert runs_batched(algo, forced)
    g_vmap, m_vmap = meta_gradients(algo, eps, forced)
    for key in g_loop:
        assert torch.allclose(g_loop[key], g_vmap[key], rtol=1e-9, atol=1e-12), key
    assert float(g_vmap["model.body.0.0.weight"].abs().max()) > 0
    if algo.log_scale is not None:  # the learned scale's gradient, on both paths
        assert float(g_vmap["log_scale"].abs()) > 0
    assert m_loop == pytest.approx(m_vmap, rel=1e-9)


def test_reptile_on_conv4_batched_path_equals_the_per_task_loop() -> None:
    g = torch.Generator().manual_seed(3)
    y = torch.arange(3).repeat(2, 2)  # [T, 6]
    eps = mf.Episodes(torch.rand(2, 6, 1, 28, 28, generator=g, dtype=torch.float64), y,
                      torch.rand(2, 6, 1, 28, 28, generator=g, dtype=torch.float64), y)
    algo = Reptile(mf.models.conv4(3, 1, 8, 28).double(), inner_lr=0.1, inner_steps=2)
    assert not algo.runs_batched()  # convolutions on the CPU: task by task
    g_loop, m_loop = algo.meta_gradients(eps)
    g_vmap, m_vmap = meta_gradients(algo, eps, Execution(batching="vmap"))
    for key in g_loop:
        assert torch.allclose(g_loop[key], g_vmap[key], rtol=1e-9, atol=1e-12), key
    assert m_loop == pytest.approx(m_vmap, rel=1e-9)


def test_batching_is_refused_where_there_is_nothing_to_choose() -> None:
    model = mf.models.mlp(5, 3, 16, 2)
    with pytest.raises(ValueError, match="batching='loop' applies to"):
        mf.FineTune(model, num_classes=3, execution=Execution(batching="loop"))
    with pytest.raises(ValueError, match="batching must be"):
        Execution(batching="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_workers"):
        Execution(workers=0)
    with pytest.raises(ValueError, match="vmap_chunk"):
        Execution(vmap_chunk=0)


def test_autograd_inner_loop_cannot_run_under_vmap() -> None:
    # why the per-task loop (torch.autograd) and the batched one (torch.func.grad) are two
    # functions sharing their update rule (functional.sgd_update), not one
    model = mf.models.mlp(1, 1, 8, 1)
    params = dict(model.named_parameters())
    eps = regression_batch()

    def one_task(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        adapted = mf.functional.inner_loop(model, params, sx, sy, 1, 0.1)
        return adapted["head.weight"]

    with pytest.raises(RuntimeError):
        torch.func.vmap(one_task)(eps.support_x, eps.support_y)
    fixed = {n: p for n, p in params.items() if not n.startswith("head.")}
    start = {n: p for n, p in params.items() if n.startswith("head.")}
    by_func = torch.func.vmap(lambda sx, sy: mf.functional.functional_descent(
        model, fixed, start, sx, sy, 1, mf.functional.Rates(0.1)))(eps.support_x, eps.support_y)
    by_autograd = torch.stack([mf.functional.inner_loop(
        model, params, t.support_x, t.support_y, 1, 0.1, adapt_names=list(start))["head.weight"]
        for t in eps])
    assert torch.allclose(by_func["head.weight"], by_autograd, atol=1e-6)
