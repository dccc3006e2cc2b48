"""The fast paths compute what the plain formulations compute.

* the fused conv block and the pool-before-ReLU order against the textbook block;
* task-parallel meta-gradients (2 workers) and the serial per-task path against an
  independent reference (``tests/oracles.py``: each task's meta-gradient on its own, then
  their mean) over a model in the textbook layer order, for every algorithm; the vmap
  paths on an MLP against the same reference;
* the peers of ``metafit bench`` agree with metafit (so the speed table compares equal work).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import oracles
from metafit.algorithms import build_algorithm, get_algorithm
from metafit.cli import bench, bench_peers
from metafit.cli.main import ENV_WORKERS, with_env_workers
from metafit.episodes import Episodes
from metafit.execution import Execution, meta_gradients
from metafit.execution import threads as parallel
from metafit.models import blocks as kernels
from metafit.models import conv4, mlp
from metafit.models.blocks import ConvBlock, once_differentiable_region

ALGORITHMS = ["maml", "fomaml", "anil", "reptile", "protonet"]


def small_problem(algorithm: str, tasks: int = 4, hidden: int = 8, seed: int = 0
                  ) -> tuple[oracles.Problem, nn.Module, Episodes]:
    cfg = oracles.Problem(algorithm, "omniglot", 2 if algorithm != "protonet" else 0,
                          tasks, ways=3, shots=2, queries=3)
    _, episodes = oracles.make_problem(cfg, seed)
    torch.manual_seed(seed)
    model = conv4(None if algorithm == "protonet" else 3, 1, hidden, 28)
    return cfg, model, episodes


def metafit_grads(cfg: oracles.Problem, model: nn.Module, episodes: Episodes,
                  workers: int | None = None) -> dict[str, torch.Tensor]:
    """metafit's meta-gradients for ``cfg`` on ``workers`` task threads (None: auto),
    renamed like ``model.named_parameters()`` (the oracle's names)."""
    kind = get_algorithm(cfg.algorithm)
    options: dict[str, object] = {
        "execution": Execution(cfg.batching if kind.batch_form == "vmap" else "auto", workers)}
    if kind.adapts_with_steps:
        options.update(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps)
    if cfg.algorithm == "reptile":  # the oracle computes no query metrics: nor does this
        options["query_metrics"] = False
    grads, _ = build_algorithm(cfg.algorithm, model, **options).meta_gradients(episodes)
    return {n.removeprefix("model."): g for n, g in grads.items() if n.startswith("model.")}


def assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                       tol: float = 2e-4) -> None:
    assert set(a) == set(b)
    assert oracles.max_relative_difference(a, b) < tol


# -- the block ----------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_fused_block_matches_textbook_block(channels: int) -> None:
    torch.manual_seed(0)
    block = ConvBlock(channels, 16)
    with torch.no_grad():  # negative BN scales exercise the min-pool branch
        block[1].weight.copy_(torch.randn(16))
        block[1].bias.copy_(torch.randn(16))
    plain = nn.Sequential(*block)
    x = (torch.rand(6, channels, 12, 10) > 0.7).float()  # binary: max-pool ties
    upstream = torch.randn(6, 16, 6, 5)
    expected = plain(x)
    ref = torch.autograd.grad(expected, list(plain.parameters()), upstream)
    with once_differentiable_region():
        assert kernels.fused_block_applies(block, x)
        got = block(x)
    fused = torch.autograd.grad(got, list(block.parameters()), upstream)
    assert torch.allclose(got, expected, atol=1e-5)
    scale = max(float(r.abs().max()) for r in ref)  # the conv bias' is rounding noise
    for r, f, name in zip(ref, fused, ["conv.w", "conv.b", "bn.w", "bn.b"], strict=True):
        assert torch.allclose(f, r, atol=2e-5 * scale, rtol=1e-4), name
    assert torch.count_nonzero(fused[1]) == 0  # the conv bias has no effect before BN


def test_block_outside_region_is_textbook_exactly_and_loads_plain_checkpoints() -> None:
    torch.manual_seed(1)
    block = ConvBlock(1, 8)
    plain = nn.Sequential(*copy.deepcopy(list(block)))
    plain.load_state_dict(block.state_dict())  # same names
    x = torch.randn(4, 1, 9, 9)  # odd size: floor pooling, never fused
    assert not kernels.fused_block_applies(block, x)
    out = block(x)
    assert torch.equal(out, plain(x))
    g1 = torch.autograd.grad(out.square().sum(), list(block.parameters()))
    g2 = torch.autograd.grad(plain(x).square().sum(), list(plain.parameters()))
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)


def test_fused_block_refuses_second_derivatives() -> None:
    block = ConvBlock(1, 4)
    x = torch.rand(2, 1, 8, 8)
    with once_differentiable_region():
        out = block(x)
    (g,) = torch.autograd.grad(out.sum(), [block[0].weight], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(g.sum(), [block[0].weight])


def test_region_is_thread_local_and_nests() -> None:
    assert not kernels.is_once_differentiable()
    with once_differentiable_region():
        with once_differentiable_region():
            assert kernels.is_once_differentiable()
        assert kernels.is_once_differentiable()
    assert not kernels.is_once_differentiable()


# -- meta-gradients ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_parallel_and_serial_meta_gradients_match_a_plain_loop(algorithm: str) -> None:
    cfg, model, episodes = small_problem(algorithm)
    reference = oracles.meta_gradient(cfg, oracles.textbook(model), episodes)
    for workers in (1, 2):
        assert_grads_close(metafit_grads(cfg, model, episodes, workers), reference)


def test_parallel_meta_gradients_are_deterministic_and_metrics_keep_task_order() -> None:
    _, model, episodes = small_problem("maml", tasks=5)
    algo = build_algorithm("maml", model, inner_lr=0.4, inner_steps=1,
                           execution=Execution(workers=2))
    g1, m1 = algo.meta_gradients(episodes)
    g2, m2 = algo.meta_gradients(episodes)
    assert all(torch.equal(g1[n], g2[n]) for n in g1)
    assert m1 == m2
    g3, m3 = meta_gradients(algo, episodes, Execution(workers=1))
    assert_grads_close(g1, g3, 1e-5)
    assert m3["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m3["accuracy"] == pytest.approx(m1["accuracy"])


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "reptile"])
def test_batched_paths_on_an_mlp_match_the_plain_loop(algorithm: str) -> None:
    cfg = oracles.Problem(algorithm, "sinusoid", 2, 6, 1, 5, 5)
    model, episodes = oracles.make_problem(cfg)
    reference = oracles.meta_gradient(cfg, copy.deepcopy(model), episodes)
    got = metafit_grads(cfg, model, episodes)  # vmap over the tasks
    assert_grads_close(got, reference, 1e-5)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil"])
def test_vmap_on_conv4_with_batchnorm_matches_the_loop_in_float64(algorithm: str) -> None:
    # vmap is the GPU's batched path; conv4's BatchNorm must differentiate twice under
    # torch.func (PyTorch's fused batch_norm did not: 3e-3 relative error, even in float64)
    base = oracles.Problem(algorithm, "omniglot", 2, 3, ways=3, shots=1, queries=2)

    def grads(batching: str) -> dict[str, torch.Tensor]:
        cfg = oracles.Problem(**{**base.__dict__, "batching": batching})
        model, episodes = oracles.to_dtype(*oracles.make_problem(cfg, 0), torch.float64)
        return metafit_grads(cfg, model, episodes)

    loop, vmap = grads("loop"), grads("vmap")
    assert next(iter(vmap.values())).dtype == torch.float64
    assert_grads_close(vmap, loop, 1e-10)
    # the conv biases precede BatchNorm, which cancels them: their meta-gradient is zero
    assert float(vmap["body.3.0.bias"].abs().max()) < 1e-10


@pytest.mark.parametrize("algorithm", ["maml", "anil"])
def test_vmap_on_strided_conv4_matches_the_loop_in_float64(algorithm: str) -> None:
    # the MAML paper's Omniglot model (stride-2 convolutions, no pooling) batches too
    cfg = oracles.Problem(algorithm, "omniglot", 2, 3, ways=3, shots=1, queries=2)
    _, episodes = oracles.make_problem(cfg, 0)
    episodes = Episodes(episodes.support_x.double(), episodes.support_y,
                        episodes.query_x.double(), episodes.query_y)
    torch.manual_seed(0)
    model = conv4(3, 1, 8, 28, strided=True).double()
    assert kernels.native_batch_norms(model) == []
    grads = {b: build_algorithm(algorithm, model, inner_lr=0.4, inner_steps=2,
                                batching=b).meta_gradients(episodes)[0]
             for b in ("loop", "vmap")}
    assert_grads_close(grads["vmap"], grads["loop"], 1e-10)
    assert float(grads["vmap"]["model.body.0.0.weight"].abs().max()) > 0


def test_second_order_vmap_refuses_native_batchnorm() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="'1'.*fused batch_norm"):
        build_algorithm("maml", model, batching="vmap")
    build_algorithm("maml", model, batching="vmap", first_order=True)  # first order is fine
    assert kernels.native_batch_norms(conv4(5, 1, 8, 28)) == []


def test_peer_agreement_in_float64_is_exact() -> None:
    # on a GPU the bench compares the implementations in float64 (float32 cuDNN rounding,
    # amplified by K = 5 steps at rate 0.4, exceeds the tolerance); the peers then agree
    # to rounding
    cfg = bench.BenchConfig("maml", "omniglot", 2, 2, ways=3, shots=1, queries=2)
    ours = bench_peers.fresh(cfg, "metafit", 0, torch.float64)[0]()
    for peer in ("loop", "higher", "torchopt"):
        theirs = bench_peers.fresh(cfg, peer, 0, torch.float64)[0]()
        assert bench.max_relative_difference(theirs, ours) < 1e-10, peer


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_vmap_chunks_give_the_same_meta_gradients(algorithm: str) -> None:
    cfg = oracles.Problem(algorithm, "sinusoid", 2, 7, 1, 5, 5)
    model, episodes = oracles.make_problem(cfg)
    algo = build_algorithm(algorithm, model, inner_lr=0.01, inner_steps=2)
    assert algo.runs_batched()
    whole, m1 = algo.meta_gradients(episodes)
    chunked, m2 = meta_gradients(algo, episodes, Execution(vmap_chunk=3))  # 3 + 3 + 1 tasks
    assert_grads_close(chunked, whole, 1e-6)
    assert m1["mse"] == pytest.approx(m2["mse"], rel=1e-6)


@pytest.mark.parametrize("use_query", [False, True])
def test_reptile_batched_and_per_task_paths_agree_with_minibatches(use_query: bool) -> None:
    cfg = oracles.Problem("reptile", "sinusoid", 3, 5, 1, 6, 4)
    model, episodes = oracles.make_problem(cfg)
    algo = build_algorithm("reptile", model, inner_lr=0.02, inner_steps=3, inner_batch=4,
                           use_query=use_query)
    assert algo.runs_batched()
    batched, m1 = algo.meta_gradients(episodes)  # vmap (no convolutions)
    looped, m2 = meta_gradients(algo, episodes, Execution(batching="loop"))  # task by task
    assert_grads_close(batched, looped, 1e-5)
    assert m1["mse"] == pytest.approx(m2["mse"], rel=1e-5)


def test_parallel_replicas_follow_parameter_updates() -> None:
    _, model, episodes = small_problem("fomaml")
    algo = build_algorithm("fomaml", model, inner_lr=0.4, inner_steps=1,
                           execution=Execution(workers=2))
    before, _ = algo.meta_gradients(episodes)
    with torch.no_grad():
        for n, p in algo.named_parameters():
            p -= 0.5 * before[n]
    after, _ = algo.meta_gradients(episodes)
    serial, _ = meta_gradients(algo, episodes, Execution(workers=1))
    assert_grads_close(after, serial, 1e-5)
    assert oracles.max_relative_difference(after, before) > 1e-3


def test_worker_resolution() -> None:
    model = mlp(1, 1, 8, 1)
    algo = build_algorithm("maml", model)
    assert parallel.resolve_workers(algo, 3, 10) == 3
    assert parallel.resolve_workers(algo, 3, 2) == 2  # never more workers than tasks
    assert parallel.resolve_workers(algo, None, 10) == min(torch.get_num_threads(), 10)
    # the command line reads METAFIT_TASK_WORKERS once, as the override task_workers
    env = {ENV_WORKERS: "3"}
    assert with_env_workers(["seed=1"], env) == ["seed=1", "task_workers=3"]
    assert with_env_workers(["seed=1"], {ENV_WORKERS: "auto"}) == ["seed=1"]
    assert with_env_workers([], {}) == []
    with pytest.raises(ValueError, match="METAFIT_TASK_WORKERS"):
        with_env_workers([], {ENV_WORKERS: "zero"})
    with pytest.raises(ValueError, match="task_workers"):
        Execution(workers=0)
    dropped = build_algorithm("maml", nn.Sequential())
    dropped.model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))  # random layers
    assert parallel.resolve_workers(dropped, None, 8) == 1


# -- the peers of `metafit bench` ----------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bench_peers_compute_metafits_meta_gradient(algorithm: str) -> None:
    cfg = bench.BenchConfig(algorithm, "omniglot", 1 if algorithm != "protonet" else 0, 3,
                            ways=3, shots=1, queries=2)
    row = bench.run_config(cfg, list(bench.PEERS), repeats=1)
    expected = ["loop"] if algorithm == "protonet" else ["higher", "torchopt", "loop"]
    assert sorted(row.agreement) == sorted(expected)
    assert max(row.agreement.values()) < bench.AGREEMENT_TOLERANCE
    assert set(row.seconds) == {"metafit", *expected}
    table = bench.format_table([row], list(bench.PEERS))
    assert cfg.label in table and "x** (" in table


def test_bench_rejects_a_peer_that_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = bench.BenchConfig("fomaml", "sinusoid", 1, 3, 1, 4, 4)

    def wrong(cfg: bench.BenchConfig, model: nn.Module, episodes: Episodes) -> bench.GradFn:
        good = bench.loop_fn(cfg, model, episodes)
        return lambda: {n: 2 * g for n, g in good().items()}

    monkeypatch.setitem(bench.IMPLEMENTATIONS, "loop", wrong)
    with pytest.raises(RuntimeError, match="differs from metafit"):
        bench.run_config(cfg, ["loop"], repeats=1)


def test_cli_bench_smoke(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from metafit.cli.main import main

    out = tmp_path / "rows.json"
    code = main(["bench", "--quick", "--algorithms", "fomaml", "--problems", "sinusoid",
                 "--peers", "loop", "--repeats", "1", "--meta-batch", "4", "--json-out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "fomaml sinusoid 10-shot T=4 K=1" in text and "| loop |" in text
    assert out.exists() and "seconds" in out.read_text()


def test_loss_helpers_agree_with_metafit() -> None:
    # the peers' (and the oracle's) ProtoNet loss is the squared euclidean distance of
    # metafit's ProtoNet
    torch.manual_seed(0)
    f = nn.Flatten()
    sx, qx = torch.randn(6, 4), torch.randn(9, 4)
    sy, qy = torch.tensor([0, 0, 1, 1, 2, 2]), torch.arange(3).repeat(3)
    protos = torch.stack([sx[sy == c].mean(0) for c in range(3)])
    expected = F.cross_entropy(-((qx[:, None] - protos[None]) ** 2).sum(-1), qy)
    assert torch.allclose(bench_peers.protonet_loss(f, sx, sy, qx, qy, 3), expected, atol=1e-6)
    assert torch.allclose(oracles.protonet_loss(f, sx, sy, qx, qy, 3), expected, atol=1e-6)


def test_float_table_gathers_what_on_the_fly_normalisation_gives() -> None:
    from metafit.data.base import TensorClassDataset

    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8, generator=gen)
    ds = TensorClassDataset(data, torch.arange(12) % 3, ["a", "b", "c"])
    index = torch.tensor([[0, 5], [11, 2]])
    expected = ds.data.view(12, -1)[index.reshape(-1)].float().mul_(1 / 255).view(2, 2, 1, 4, 4)
    assert torch.equal(ds.gather(index), expected)  # built on first use
    ds.data[0] = 255 - ds.data[0]  # in-place change: the table follows
    assert torch.equal(ds.gather(torch.tensor([0])), ds.data[:1].float().mul_(1 / 255))
    ds.FLOAT_TABLE_BYTES = 0  # too big for a table: gathered and normalised on the fly
    assert torch.equal(ds.gather(index), ds.data.view(12, -1)[index.reshape(-1)].float()
                       .mul_(1 / 255).view(2, 2, 1, 4, 4))


def test_recipe_task_workers_reach_the_algorithm() -> None:
    from metafit.algorithms.from_recipe import build_algorithm as from_recipe
    from metafit.config.recipe import load_recipe

    recipe = load_recipe("sinusoid_maml", ["task_workers=3", "vmap_chunk=5"])
    assert from_recipe(recipe).execution == Execution("auto", 3, 5)
    assert from_recipe(load_recipe("sinusoid_maml")).execution.workers is None  # auto
    assert from_recipe(load_recipe("sinusoid_maml")).runs_batched()  # auto: an MLP
    assert not from_recipe(load_recipe("sinusoid_maml", ["batching=loop"])).runs_batched()
    assert from_recipe(load_recipe("omniglot_5w1s_fomaml", ["batching=vmap"])).runs_batched()
    assert not from_recipe(load_recipe("sinusoid_reptile", ["batching=loop"])).runs_batched()
    with pytest.raises(ValueError, match="batching"):  # pretraining has no per-task form
        from_recipe(load_recipe("sinusoid_finetune", ["batching=vmap"]))
