"""The vmap path over tasks gives the same meta-gradients as the per-task loop."""

from __future__ import annotations

import pytest
import torch

import metafit as mf
from metafit.algorithms import ANIL, FOMAML, MAML, MetaSGD


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
    assert not loop.uses_vmap() and vmapped.uses_vmap()
    g_loop, m_loop = loop.meta_gradients(eps)
    g_vmap, m_vmap = vmapped.meta_gradients(eps)
    assert g_loop.keys() == g_vmap.keys()
    for key in g_loop:
        assert torch.allclose(g_loop[key], g_vmap[key], rtol=1e-4, atol=1e-6), key
    assert any(float(g.abs().max()) > 0 for g in g_vmap.values())
    for key in m_loop:
        assert m_loop[key] == pytest.approx(m_vmap[key], rel=1e-5)


def test_auto_picks_vmap_for_mlps_and_the_loop_for_convolutions() -> None:
    assert MAML(mf.models.mlp(1, 1, 8, 1)).uses_vmap()
    assert not MAML(mf.models.conv4(5, 1, 4, 8, 2)).uses_vmap()
    with pytest.raises(ValueError, match="batching must be"):
        MAML(mf.models.mlp(), batching="fast")


def test_auto_batches_convolutions_off_the_cpu_where_vmap_can_run() -> None:
    # The "meta" device stands in for a GPU: the choice reads only the parameters' device.
    conv = mf.models.conv4(5, 1, 4, 28).to("meta")
    assert MAML(conv).uses_vmap() and ANIL(conv).uses_vmap()
    assert MAML(mf.models.conv4(5, 1, 4, 28, strided=True).to("meta")).uses_vmap()
    native = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                                 torch.nn.Flatten(), torch.nn.LazyLinear(2)).to("meta")
    assert not MAML(native).uses_vmap()  # its fused BatchNorm is wrong twice under vmap
    assert FOMAML(native).uses_vmap()  # first order is fine
    marked = mf.models.mlp(1, 1, 8, 1).to("meta")
    marked.head.per_task_only = True
    assert not MAML(marked).uses_vmap()
    assert not MAML(mf.models.conv4(5, 1, 4, 28)).uses_vmap()  # on the CPU: the loop
    assert not MAML(conv, batching="loop").uses_vmap()
