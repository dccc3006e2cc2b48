"""Meta-gradients replayed as CUDA graphs (metafit.execution.cuda_graphs).

The capture itself needs a GPU: those tests run where torch sees one (they were run on the
lent H200, benchmarks/RESULTS.md); the rest (metrics kept on the device, the refusals, the
recipe and CLI checks) run everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import oracles
from metafit.algorithms import MAML, build_algorithm
from metafit.algorithms.base import Algorithm
from metafit.algorithms.from_recipe import build_algorithm as from_recipe
from metafit.cli import bench
from metafit.config.schema import Recipe
from metafit.episodes import Episodes
from metafit.execution import Execution, meta_gradient_tensors, meta_gradients
from metafit.execution.cuda_graphs import GraphedMetaGradients
from metafit.models import mlp
from metafit.runs.directory import RunDir

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_metric_tensors_keep_metrics_on_the_device() -> None:
    loss, scores = torch.tensor(0.5), torch.tensor([1.0, 0.0])
    assert Algorithm.metrics(loss, scores, False) == {"loss": 0.5, "accuracy": 0.5}
    assert Algorithm.metrics(loss * 2, scores, True) == {"loss": 1.0, "mse": 0.5}
    # what a capture records: the same metrics, as tensors nothing has read back
    algo = build_algorithm("maml", mlp(5, 3, 8, 1), inner_lr=0.1)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(2, 2)  # [T, 6]
    eps = Episodes(torch.randn(2, 6, 5, generator=g), y, torch.randn(2, 6, 5, generator=g), y)
    for execution in (Execution(batching="loop", workers=1), Execution(batching="vmap")):
        grads, tensors = meta_gradient_tensors(algo, eps, execution)
        same, floats = meta_gradients(algo, eps, execution)
        assert set(tensors) == {"loss", "accuracy"}
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in tensors.values())
        assert {k: float(v) for k, v in tensors.items()} == floats
        assert all(torch.equal(grads[n], same[n]) for n in grads)


def test_graphs_refuse_an_algorithm_off_the_gpu() -> None:
    with pytest.raises(ValueError, match="CUDA device; it has parameters on cpu"):
        GraphedMetaGradients(build_algorithm("maml", mlp()))


def test_recipe_checks_cuda_graphs() -> None:
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device, not device 'cpu'"):
        Recipe(cuda_graphs=True)
    with pytest.raises(ValueError, match="not algorithm 'protonet'"):
        from_recipe(Recipe(cuda_graphs=True, device="cuda", algorithm="protonet"))
    assert Recipe(cuda_graphs=True, device="cuda:0", algorithm="anil").cuda_graphs


def test_bench_refuses_graphs_on_the_cpu() -> None:
    with pytest.raises(SystemExit, match="need --device cuda"):
        bench.main(["--cuda-graph", "--quick", "--problems", "sinusoid", "--peers", "loop"])


# -- on a GPU -----------------------------------------------------------------------------
def _configs() -> list[oracles.Problem]:
    out = [oracles.Problem(a, "omniglot", 2, 3, ways=3, shots=1, queries=2, device="cuda",
                           batching=b)
           for a in ("maml", "fomaml", "anil") for b in ("loop", "vmap")]
    out.append(oracles.Problem("maml", "sinusoid", 2, 4, 1, 5, 5, device="cuda"))
    return out


@needs_cuda
@pytest.mark.parametrize("cfg", _configs(), ids=lambda c: c.label)
def test_replays_equal_eager_meta_gradients_as_the_weights_and_data_change(
        cfg: oracles.Problem) -> None:
    model, episodes = oracles.make_problem(cfg, 0)
    model = model.double()
    algo = build_algorithm(cfg.algorithm, model, inner_lr=cfg.inner_lr,
                           inner_steps=cfg.inner_steps, batching=cfg.batching)
    graphed = GraphedMetaGradients(algo)

    def double(e: Episodes) -> Episodes:
        return Episodes(*(t.double() if t.is_floating_point() else t for t in
                                (e.support_x, e.support_y, e.query_x, e.query_y)), e.classes)

    for seed in (0, 1, 2):
        batch = double(oracles.make_problem(cfg, seed)[1])
        stats = {n: b.clone() for n, b in algo.named_buffers()}
        grads, metrics = graphed(batch)
        after = {n: b.clone() for n, b in algo.named_buffers()}
        for n, b in algo.named_buffers():  # the eager call starts from the same statistics
            b.copy_(stats[n])
        eager, eager_metrics = algo.meta_gradients(batch)
        assert oracles.max_relative_difference(grads, eager) < 1e-10
        assert metrics.keys() == eager_metrics.keys()
        for key, value in metrics.items():
            assert value == pytest.approx(eager_metrics[key], rel=1e-9)
        for n, b in algo.named_buffers():  # a replay updates running statistics as eager
            assert torch.allclose(after[n], b), n
        with torch.no_grad():  # an optimiser step in place: the next replay sees it
            for n, p in algo.named_parameters():
                p.sub_(0.01 * grads[n])
    assert graphed.captures == 1
    graphed(double(oracles.make_problem(oracles.Problem(
        **{**cfg.__dict__, "meta_batch": cfg.meta_batch + 1}), 3)[1]))
    assert graphed.captures == 2  # another shape: captured again


@needs_cuda
def test_an_algorithm_that_reads_values_back_is_refused_clearly() -> None:
    class Reading(MAML):  # reads its loss back to the CPU mid-computation
        def task_loss(self, support_x: torch.Tensor, support_y: torch.Tensor,
                      query_x: torch.Tensor, query_y: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
            loss, out = super().task_loss(support_x, support_y, query_x, query_y)
            float(loss)
            return loss, out

    cfg = oracles.Problem("maml", "omniglot", 1, 3, ways=3, shots=1, queries=2,
                          device="cuda")
    model, episodes = oracles.make_problem(cfg, 0)
    graphed = GraphedMetaGradients(Reading(model, batching="loop"))
    with pytest.raises(RuntimeError, match="Reading's meta-gradient cannot be captured"):
        graphed(episodes)


@needs_cuda
def test_training_with_cuda_graphs_logs_what_eager_training_logs(tmp_path: Path) -> None:
    from metafit.training.trainer import Trainer

    runs = {}
    for graphs in (False, True):
        recipe = Recipe(dataset="sinusoid", model="mlp", algorithm="maml", inner_lr=0.01,
                        shots=5, queries=5, meta_batch=8, iterations=6, val_every=3,
                        val_episodes=4, log_every=1, device="cuda", cuda_graphs=graphs)
        out = tmp_path / str(graphs)
        Trainer(recipe, out, progress=False).fit()
        runs[graphs] = [r for r in RunDir(out).read_metrics() if "loss" in r]
    assert len(runs[True]) == len(runs[False]) >= 6
    for a, b in zip(runs[True], runs[False], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
