"""Meta-training across processes (torch.distributed, gloo on loopback, 2 processes).

* one distributed meta-step over a meta-batch of 8 tasks equals a single-process step over
  the union of the ranks' tasks (MAML, Reptile, ProtoNet; and an uneven 4 + 3 split);
* sharded validation equals single-process evaluation;
* a 2-process ``metafit train`` under the real ``torchrun`` whose rank 0 dies mid-way
  resumes to the same metrics and parameters as an uninterrupted run;
* the units: shard sizes, weighted averaging, the single-process context, the rule that a
  checkpoint resumes only with the number of processes that wrote it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from dist_helpers import WORLD, join_group, spawn_group, torchrun
from metafit.config.schema import Recipe, make_recipe
from metafit.data.sampler import EpisodeSampler
from metafit.distributed import (
    SINGLE,
    DistContext,
    all_gather_object,
    all_reduce_mean_grads,
    all_reduce_mean_metrics,
    init_distributed,
    rank_seed,
    run_on_main,
    shard,
    shard_sizes,
    shutdown,
)
from metafit.episodes import Episodes
from metafit.evaluation.protocol import evaluate
from metafit.runs.directory import CheckpointError, RunDir, load_checkpoint
from metafit.runs.trained import evaluate_run
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe, image_folder, regression_recipe

CRASH_TRAIN = str(Path(__file__).resolve().parent / "crash_train.py")


# -- units -----------------------------------------------------------------------------
def test_shard_sizes_cover_the_batch_in_rank_order() -> None:
    assert shard_sizes(8, 2) == [4, 4]
    assert shard_sizes(7, 2) == [4, 3]
    assert shard_sizes(5, 3) == [2, 2, 1]
    assert shard_sizes(1, 2) == [1, 0]
    for n, world in [(8, 2), (7, 2), (10, 3), (2, 4)]:
        blocks = [shard(n, r, world) for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert [len(b) for b in blocks] == shard_sizes(n, world)
    with pytest.raises(ValueError):
        shard_sizes(4, 0)
    with pytest.raises(ValueError):
        shard(4, 2, 2)


def test_single_process_context_changes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == SINGLE and ctx.is_main and not ctx.enabled
    grads = {"w": torch.randn(3)}
    assert all_reduce_mean_grads(grads, 3, 3, ctx) is grads
    assert all_reduce_mean_metrics({"loss": 1.5}, 3, 3, ctx) == {"loss": 1.5}
    assert all_gather_object({"a": 1}, ctx) == [{"a": 1}]
    assert run_on_main(lambda: 7, ctx) == 7
    assert rank_seed(5, 0) == 5 and rank_seed(5, 1) != 5
    recipe = regression_recipe("maml", iterations=2, checkpoint_every=1)
    trainer = Trainer(recipe, tmp_path / "run", progress=False)
    assert trainer.dist == SINGLE and trainer.train_sampler.seed == recipe.seed
    assert trainer.shares == [recipe.meta_batch]
    trainer.fit()
    ckpt = load_checkpoint(RunDir(tmp_path / "run").checkpoint("last"))
    assert "world_size" not in ckpt and "rank_states" not in ckpt  # the format of before
    assert "world_size" not in RunDir(tmp_path / "run").status()
    shutdown(ctx)  # nothing to destroy


def test_errors_that_cannot_be_pickled_are_sent_as_their_text() -> None:
    from metafit.distributed import _picklable

    class Local(Exception):  # a local class: pickle cannot find it by name
        pass

    error = ValueError("kept as it is")
    assert _picklable(error) is error
    sent = _picklable(Local("details"))
    assert isinstance(sent, RuntimeError) and str(sent) == "Local: details"


def test_meta_batch_smaller_than_the_world_is_refused(tmp_path: Path) -> None:
    from metafit.training.build import meta_batch_shares

    recipe = regression_recipe("maml", meta_batch=1)
    with pytest.raises(ValueError, match="meta_batch=1 is smaller than the 2 processes"):
        meta_batch_shares(recipe, DistContext(rank=0, world_size=2))
    assert meta_batch_shares(recipe.model_copy(update={"meta_batch": 5}),
                              DistContext(rank=1, world_size=2)) == [3, 2]


# -- one meta-step on 2 processes vs 1 -------------------------------------------------
def step_cases(root: Path) -> dict[str, Recipe]:
    """Recipes of the equality test. SGD outer steps: an update proportional to the
    gradient (Adam's first step, ~lr * sign(g), would hide a wrong scale)."""
    sgd = dict(optimizer="sgd", outer_lr=0.5)
    return {
        "maml": regression_recipe("maml", meta_batch=8, grad_clip=0.5, **sgd),
        "reptile": regression_recipe("reptile", meta_batch=8, inner_steps=3, optimizer="sgd",
                                     outer_lr=1.0),
        "protonet": classification_recipe(root, "protonet", meta_batch=8, **sgd),
        "maml_uneven": regression_recipe("maml", meta_batch=7, **sgd),
    }


def _step_worker(rank: int, port: int, out: str, cases: dict[str, dict[str, Any]]) -> None:
    """One rank: one meta-step per case, sharded evaluation, collectives; saves results."""
    ctx = join_group(rank, port)
    results: dict[str, Any] = {"rank": ctx.rank, "world": ctx.world_size}
    try:
        for name, values in cases.items():
            trainer = Trainer(make_recipe(values), Path(out) / name, progress=False, dist=ctx)
            before = evaluate(trainer.algo, trainer.val_sampler, episodes=7, dist=ctx)
            metrics = trainer._step()
            results[name] = {"params": {n: p.detach().clone()
                                        for n, p in trainer.algo.named_parameters()},
                             "metrics": metrics, "eval": before.to_dict()}
        grads = {"w": torch.full((3,), 2.0 if rank == 0 else 10.0)}  # ranks: 3 tasks, 1 task
        results["grads"] = all_reduce_mean_grads(grads, 3 - 2 * rank, 4, ctx)["w"]
        results["metrics"] = all_reduce_mean_metrics({"loss": 2.0 if rank == 0 else 10.0},
                                                     3 - 2 * rank, 4, ctx)
        try:
            run_on_main(lambda: _fail("bad run directory"), ctx)
        except ValueError as e:
            results["error"] = str(e)
    finally:
        shutdown(ctx)
    torch.save(results, Path(out) / f"rank{rank}.pt")


def _fail(message: str) -> None:
    raise ValueError(message)


@pytest.fixture(scope="module")
def distributed_steps(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Recipe],
                                                                         list[dict[str, Any]]]:
    """Run :func:`_step_worker` on 2 spawned processes; the recipes and each rank's
    results."""
    cases = step_cases(image_folder(tmp_path_factory.mktemp("dist_data")))
    values = {k: r.model_dump() for k, r in cases.items()}
    tmp = spawn_group(_step_worker, (values,), tmp_path_factory, "dist_step")
    return cases, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def concat(batches: list[Episodes]) -> Episodes:
    """The tasks of ``batches`` one after the other."""
    classes = [b.classes for b in batches]
    return Episodes(*(torch.cat([getattr(b, f) for b in batches])
                      for f in ("support_x", "support_y", "query_x", "query_y")),
                    None if any(c is None for c in classes)
                    else torch.cat(classes))  # type: ignore[arg-type]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", ["maml", "reptile", "protonet", "maml_uneven"])
def test_one_distributed_step_equals_the_single_process_step(
        distributed_steps: tuple[dict[str, Recipe], list[dict[str, Any]]], case: str,
        tmp_path: Path) -> None:
    cases, ranks = distributed_steps
    recipe = cases[case]
    single = Trainer(recipe, tmp_path / "single", progress=False, dist=SINGLE)
    start = {n: p.detach().clone() for n, p in single.algo.named_parameters()}
    data = single.train_sampler.dataset
    shares = shard_sizes(recipe.meta_batch, WORLD)
    union = concat([EpisodeSampler(data, recipe.ways, recipe.shots, recipe.queries,
                                   seed=rank_seed(recipe.seed, r)).sample(shares[r])
                    for r in range(WORLD)])
    assert len(union) == recipe.meta_batch
    metrics = single._update(union)
    for r in range(WORLD):
        got = ranks[r][case]
        for name, p in single.algo.named_parameters():
            assert torch.allclose(got["params"][name], p, atol=1e-6, rtol=1e-5), (r, name)
        assert got["metrics"].keys() == metrics.keys()
        for key, value in metrics.items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    moved = max(float((p.detach() - start[n]).abs().max())
                for n, p in single.algo.named_parameters())
    assert moved > 1e-4  # the step did something
    if case == "maml":  # the clip acted on the averaged gradient
        assert metrics["grad_norm"] > recipe.grad_clip  # type: ignore[operator]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", ["maml", "protonet"])
def test_sharded_evaluation_equals_single_process(
        distributed_steps: tuple[dict[str, Recipe], list[dict[str, Any]]], case: str,
        tmp_path: Path) -> None:
    cases, ranks = distributed_steps
    single = Trainer(cases[case], tmp_path / "single", progress=False, dist=SINGLE)
    expected = evaluate(single.algo, single.val_sampler, episodes=7)
    for r in range(WORLD):  # every rank holds the full result (same early-stopping calls)
        got = ranks[r][case]["eval"]
        assert got["episodes"] == 7
        assert got["per_episode"] == pytest.approx(expected.per_episode, rel=1e-6, abs=1e-9)
        assert got["mean"] == pytest.approx(expected.mean, rel=1e-6)
        assert got["ci95"] == pytest.approx(expected.ci95, rel=1e-5)
        assert got["curve"] == pytest.approx(expected.curve, rel=1e-6, abs=1e-9)


@pytest.mark.timeout(180)
def test_collectives_weight_uneven_shares_and_share_errors(
        distributed_steps: tuple[dict[str, Recipe], list[dict[str, Any]]]) -> None:
    _, ranks = distributed_steps
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world"] == WORLD
    for r in ranks:
        # rank 0: mean 2 over 3 tasks, rank 1: 10 over 1 task -> (6 + 10) / 4 = 4
        assert torch.allclose(r["grads"], torch.full((3,), 4.0))
        assert r["metrics"] == {"loss": pytest.approx(4.0)}
        assert r["error"] == "bad run directory"  # rank 0's error raised on every rank


# -- the torchrun CLI: kill a 2-process run and resume it ------------------------------
TRAIN_ARGS = ["sinusoid_maml", "iterations=12", "val_every=4", "val_episodes=10",
              "checkpoint_every=4", "log_every=2", "hidden=8", "meta_batch=5", "threads=1"]
CRASH_AT = 10  # after the checkpoint of iteration 8: iterations 9-10 are redone


def metafit_torchrun(args: list[str], tmp: Path,
                     crash_at: int | None = None) -> subprocess.CompletedProcess[str]:
    """``metafit ARGS`` on 2 processes under torchrun (:func:`dist_helpers.torchrun`);
    with ``crash_at``, rank 0 kills itself after that iteration (``crash_train.py``)."""
    program = ["-m", "metafit.cli"] if crash_at is None else [CRASH_TRAIN, str(crash_at)]
    return torchrun([*program, *args], tmp)


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run, and one killed at iteration 10 then resumed."""
    tmp = tmp_path_factory.mktemp("torchrun")
    full = metafit_torchrun(train_args(tmp / "full"), tmp)
    assert full.returncode == 0, full.stderr[-3000:]
    evaluated = metafit_torchrun(["evaluate", str(tmp / "full"), "--split", "val",
                                  "--episodes", "9", "--json"], tmp)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    crashed = metafit_torchrun(train_args(tmp / "broken"), tmp, crash_at=CRASH_AT)
    broken = RunDir(tmp / "broken")
    after_crash = {"status": broken.status(), "metrics": broken.read_metrics(),
                   "iteration": load_checkpoint(broken.checkpoint("last"))["state"]["iteration"]}
    resumed = metafit_torchrun(train_args(tmp / "broken"), tmp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"full": tmp / "full", "broken": tmp / "broken", "crashed": crashed,
            "after_crash": after_crash, "resumed": resumed, "evaluated": evaluated}


def train_args(out: Path) -> list[str]:
    return ["train", *TRAIN_ARGS, "--out", str(out), "--no-progress"]


@pytest.mark.timeout(600)
def test_killed_torchrun_run_resumes_to_the_uninterrupted_result(
        torchrun_runs: dict[str, Any]) -> None:
    crashed, after = torchrun_runs["crashed"], torchrun_runs["after_crash"]
    assert crashed.returncode != 0  # rank 0 was killed, torchrun stopped rank 1 and failed
    assert after["status"]["status"] == "running" and after["iteration"] == 8
    assert max(r["iteration"] for r in after["metrics"]) == CRASH_AT
    full, broken = RunDir(torchrun_runs["full"]), RunDir(torchrun_runs["broken"])
    assert full.status()["status"] == broken.status()["status"] == "complete"
    assert full.status()["world_size"] == WORLD
    expected, resumed = full.read_metrics(), broken.read_metrics()
    # rank 0 alone writes: each record once, in order
    assert [(r["iteration"], r["split"]) for r in expected] == [
        (2, "train"), (4, "train"), (4, "val"), (6, "train"), (8, "train"), (8, "val"),
        (10, "train"), (12, "train"), (12, "val")]
    assert [(r["iteration"], r["split"]) for r in resumed] == [
        (r["iteration"], r["split"]) for r in expected]
    for a, b in zip(expected, resumed, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - {"seconds"}:  # wall-clock time differs run to run
            if isinstance(a[key], str):
                assert b[key] == a[key], (key, a, b)
            else:
                assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (key, a, b)
    last_a = load_checkpoint(full.checkpoint("last"))
    last_b = load_checkpoint(broken.checkpoint("last"))
    assert last_a["world_size"] == WORLD and len(last_a["rank_states"]) == WORLD
    for name, p in last_a["algorithm"].items():
        assert torch.allclose(p, last_b["algorithm"][name], atol=1e-6), name
    output = torchrun_runs["resumed"].stdout
    assert output.count("trained sinusoid_maml to iteration 12") == 1  # rank 0 prints
    assert "on 2 processes" in output


@pytest.mark.timeout(600)
def test_resuming_with_another_number_of_processes_is_refused(
        torchrun_runs: dict[str, Any]) -> None:
    run = RunDir(torchrun_runs["broken"])
    recipe = run.read_recipe().model_copy(update={"iterations": 20})  # a resumable change
    before = run.read_metrics()
    with pytest.raises(CheckpointError, match=r"2 process\(es\), but this run has 1"):
        Trainer(recipe, run.path, progress=False).fit()
    assert run.read_metrics() == before  # nothing touched
    assert json.loads(run.status_file.read_text())["status"] == "complete"


@pytest.mark.timeout(600)
def test_metafit_evaluate_under_torchrun_equals_one_process(
        torchrun_runs: dict[str, Any]) -> None:
    lines = torchrun_runs["evaluated"].stdout.splitlines()
    assert len(lines) == 1  # rank 0 alone prints
    got = json.loads(lines[0])
    expected = evaluate_run(torchrun_runs["full"], "val", episodes=9)
    assert got["episodes"] == 9
    assert got["per_episode"] == pytest.approx(expected.per_episode, rel=1e-6, abs=1e-9)
    assert got["mean"] == pytest.approx(expected.mean, rel=1e-6)
    assert got["ci95"] == pytest.approx(expected.ci95, rel=1e-5)


def test_a_worker_that_destroyed_its_group_exits_at_once_with_its_status(
        tmp_path: Path) -> None:
    # A torchrun worker skips interpreter teardown, where gloo runs sometimes aborted
    # (SIGABRT after the work was done); output must still be flushed, the code kept.
    from metafit.distributed import exit_after_shutdown

    exit_after_shutdown(0)  # nothing destroyed in this process: returns
    code = (
        "import sys, torch.distributed as dist\n"
        "from metafit.distributed import DistContext, exit_after_shutdown, shutdown\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path}/store', rank=0, "
        "world_size=1)\n"
        "shutdown(DistContext(rank=0, world_size=1, local_rank=0, owns_group=True))\n"
        "sys.stdout.write('written, not flushed')\n"
        "exit_after_shutdown(3)\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "written, not flushed"
