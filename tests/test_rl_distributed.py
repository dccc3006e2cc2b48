"""Meta-RL under torchrun: the meta-batch's tasks split across 2 gloo processes on the CPU.

* a 2-rank run of 2 outer steps ends with the parameters and training records of the
  1-process run (MAML-TRPO, first-order MAML, Reptile, the pretrained baseline; an uneven
  2 + 1 split), and the ranks' parameters are identical;
* checkpoints are written by rank 0 (with every rank's state) and a 2-rank run resumed
  from ``last.pt`` logs what an uninterrupted one does, bit for bit;
* ``metafit train`` under the real ``torchrun``: on 1 process it is the plain run, bit
  for bit; on 2 it trains and writes the run directory once.

Why not bit-identical across world sizes: the tasks, rollouts and noise are the
one-process ones (every rank draws the whole batch; :mod:`metafit.rl.shard`), but the
task means are taken as block sums added across ranks rather than one mean over T, and
the policy's batched matmuls run on blocks of tasks; floating-point addition is not
associative, so the results agree to rounding, not bit for bit. TRPO's conjugate gradient
amplifies rounding when the Fisher matrix is ill-conditioned, hence ``cg_damping`` 0.1 here
(see ``TINY``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dist_helpers import WORLD, join_group, spawn_group, torchrun
from metafit.config.recipe import load_recipe
from metafit.config.schema import Recipe
from metafit.distributed import SINGLE, DistContext, shutdown
from metafit.rl.shard import TaskShard
from metafit.runs.directory import RunDir, load_checkpoint
from metafit.training.rl import RLTrainer

# Tiny navigation: 2 outer steps of 4 tasks x 2 trajectories x 10 steps take ~0.1 s.
# cg_damping 0.1, not the recipe's 1e-5: 80 steps of data make the Fisher matrix of this
# 44-parameter policy nearly singular, and 10 conjugate-gradient iterations on
# F + 1e-5 I amplify rounding: summing the same Hessian-vector products in another order
# in ONE process moved the solution by 6.7% (1e-2: 0.1%, 0.1: 3e-6). The damping makes
# the comparison one of the sharding, not of CG's conditioning.
TINY = ["horizon=10", "meta_batch=4", "trajectories=2", "policy_hidden=[8]",
        "val_episodes=3", "eval_inner_steps=1", "iterations=2", "log_every=1",
        "val_every=2", "checkpoint_every=1"]
#: TRPO's own keys (the other outer steps refuse them); on top of each case's recipe.
TRPO = ["cg_damping=0.1"]
CASES: dict[str, list[str]] = {
    "maml_trpo": [],
    "fomaml_trpo": ["algorithm=fomaml_trpo"],
    "reptile_pg": ["inner_steps=2"],  # rl_nav2d_reptile: outer_lr 0.5
    "pretrained_trpo": ["algorithm=pretrained_trpo"],
    "maml_uneven": ["meta_batch=3"],  # 2 + 1 tasks
}


def recipe(case: str, *extra: str) -> Recipe:
    if case == "reptile_pg":  # its own recipe: the navigation one holds TRPO's keys
        return load_recipe("rl_nav2d_reptile", [*TINY, *CASES[case], *extra])
    return load_recipe("rl_nav2d_maml", [*TINY, *TRPO, *CASES[case], *extra])


def params_of(trainer: RLTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.algo.named_parameters()}


def train_records(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(run).read_metrics()]


def _worker(rank: int, port: int, out: str) -> None:
    """One rank: every case trained 2 steps; a 4-step run, and the same run stopped after
    2 steps and resumed; each run's final parameters saved per rank."""
    ctx = join_group(rank, port)
    results: dict[str, Any] = {}
    try:
        for case in CASES:
            trainer = RLTrainer(recipe(case), Path(out) / case, progress=False, dist=ctx)
            trainer.fit()
            results[case] = params_of(trainer)
        full = RLTrainer(recipe("maml_trpo", "iterations=4"), Path(out) / "full",
                         progress=False, dist=ctx)
        full.fit()
        RLTrainer(recipe("maml_trpo"), Path(out) / "resumed", progress=False, dist=ctx).fit()
        resumed = RLTrainer(recipe("maml_trpo", "iterations=4"), Path(out) / "resumed",
                            progress=False, dist=ctx)
        resumed.fit()
        results["full"], results["resumed"] = params_of(full), params_of(resumed)
    finally:
        shutdown(ctx)
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The runs of :func:`_worker` on 2 spawned processes: their folder, each rank's
    parameters."""
    out = spawn_group(_worker, (), tmp_path_factory, "rl_dist")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_task_blocks_cover_the_meta_batch_and_need_a_task_per_rank(tmp_path: Path) -> None:
    blocks = [TaskShard.of(DistContext(rank=r, world_size=2), 5) for r in range(2)]
    assert [(b.start, b.stop, b.size) for b in blocks] == [(0, 3, 3), (3, 5, 2)]
    with pytest.raises(ValueError, match="at least the number of processes"):
        TaskShard.of(DistContext(rank=0, world_size=2), 1)
    assert RLTrainer(recipe("maml_trpo"), tmp_path / "run", progress=False,
                     dist=SINGLE).shard is None  # one process: the code path of before


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_take_the_one_process_steps(two_ranks: tuple[Path, list[dict[str, Any]]],
                                              case: str, tmp_path: Path) -> None:
    out, ranks = two_ranks
    single = RLTrainer(recipe(case), tmp_path / "single", progress=False, dist=SINGLE)
    start = params_of(single)
    single.fit()
    expected = params_of(single)
    for name, value in expected.items():
        assert torch.equal(ranks[0][case][name], ranks[1][case][name]), name  # identical
        gap = float((ranks[0][case][name] - value).abs().max())
        assert gap < 1e-4, (name, gap)  # parameters of size ~0.1-1
    assert max(float((expected[n] - start[n]).abs().max()) for n in start) > 1e-4  # moved
    got, want = train_records(out / case), train_records(tmp_path / "single")
    assert [r["split"] for r in got] == [r["split"] for r in want] == ["train", "train", "val"]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key, value in w.items():
            assert g[key] == (pytest.approx(value, rel=1e-4, abs=1e-6)
                              if isinstance(value, float) else value), key


@pytest.mark.timeout(300)
def test_rank_zero_writes_checkpoints_and_a_resumed_run_is_bit_identical(
        two_ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    out, ranks = two_ranks
    ckpt = load_checkpoint(RunDir(out / "full").checkpoint("last"))
    assert ckpt["world_size"] == WORLD and len(ckpt["rank_states"]) == WORLD
    assert RunDir(out / "full").status()["world_size"] == WORLD
    assert train_records(out / "resumed") == train_records(out / "full")
    for r in range(WORLD):
        for name, value in ranks[r]["full"].items():
            assert torch.equal(ranks[r]["resumed"][name], value), (r, name)


@pytest.mark.timeout(400)
def test_metafit_train_under_torchrun(tmp_path: Path) -> None:
    args = ["-m", "metafit.cli", "train", "rl_nav2d_maml", *TINY, *TRPO, "threads=1",
            "--no-progress"]
    one = torchrun([*args, "--out", str(tmp_path / "one")], tmp_path, nproc=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun([*args, "--out", str(tmp_path / "two")], tmp_path, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    plain = RLTrainer(recipe("maml_trpo", "threads=1"), tmp_path / "plain", progress=False,
                      dist=SINGLE)
    plain.fit()
    # one process under torchrun is the plain run, bit for bit (the same code path)
    assert train_records(tmp_path / "one") == train_records(tmp_path / "plain")
    weights = [load_checkpoint(RunDir(tmp_path / d).checkpoint("last"))["algorithm"]
               for d in ("one", "plain", "two")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    # two processes all-reduce the tasks' gradients, a different summation order: the
    # weights agree to rounding, amplified by the TRPO steps (measured 1.6e-6 on log_std of
    # size 0.03, deterministic, over the old atol 1e-6 + rtol 1e-5 x 0.03): an absolute
    # bound at about six times the measured gap
    for name, value in weights[1].items():
        gap = float((weights[2][name] - value).abs().max())
        assert gap < 1e-5, (name, gap)
    assert RunDir(tmp_path / "two").status()["world_size"] == 2
