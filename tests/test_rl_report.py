"""`metafit report` of meta-RL runs: the pages, the curves, and the navigation figure of
Finn et al. 2017 (Figure 4, left) drawn from the policy's own trajectories."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from metafit.cli.main import main
from metafit.config.recipe import load_recipe
from metafit.rl import Nav2d, TaskSampler
from metafit.runs.directory import RunDir
from metafit.runs.nav2d_plot import nav2d_figure, nav2d_trajectories
from metafit.runs.report import report_runs
from metafit.runs.rl import evaluate_rl_run, load_rl_trained, rl_sampler
from metafit.training.rl import RLTrainer
from test_rl_training import tiny


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny 2D-navigation run (horizon 5, 3 trajectories per task and step)."""
    out = tmp_path_factory.mktemp("rlreport") / "nav"
    RLTrainer(tiny(), out, progress=False).fit()
    return out


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_a_navigation_report_links_its_trajectory_figure(nav_run: Path, tmp_path: Path
                                                         ) -> None:
    out = tmp_path / "report"
    files = report_runs([nav_run], out=out, episodes=4)
    figure = out / "trajectories_maml_trpo.png"
    assert figure in files and (out / "training.png") in files and (out / "adaptation.png") \
        in files
    width, height = png_size(figure)
    assert 800 <= width <= 3000 and 300 <= height <= 1500  # three square panels in a row
    assert figure.stat().st_size > 10_000
    for page in ("report.md", "index.html"):
        assert "trajectories_maml_trpo.png" in (out / page).read_text()
    summary = json.loads((out / "report.json").read_text())
    assert summary["maml_trpo"]["metric"] == "return" and summary["maml_trpo"]["episodes"] == 4
    # the report's numbers are `metafit evaluate`'s
    assert summary["maml_trpo"]["per_episode"] == evaluate_rl_run(nav_run, episodes=4,
                                                                  steps=3).per_episode


def test_the_figure_draws_the_trajectories_the_policy_produces(nav_run: Path) -> None:
    recipe, algo = load_rl_trained(nav_run)
    data = nav2d_trajectories(algo, rl_sampler(recipe, "test"), tasks=3, steps=2,
                              trajectories=recipe.trajectories)
    # the same rollouts sampled directly: the fixed test goals and the evaluation's stream
    family = Nav2d(horizon=recipe.horizon or 100)
    sampler = TaskSampler(family, seed=recipe.seed + 2)
    episode = algo.sample(family.env(sampler.fixed(3)), recipe.trajectories,
                          sampler.fixed_rollouts(), steps=2)
    assert torch.equal(data.goals, sampler.fixed(3)["goal"])
    for k, batch in enumerate((*episode.supports, episode.query)):
        observed = batch.observations.permute(1, 2, 0, 3)  # [N, B, H, 2]
        assert torch.equal(data.positions[k, :, :, :-1], observed)
        assert torch.equal(data.lengths[k], batch.masks.sum(0).long())
    assert torch.equal(data.returns, episode.returns().T)
    # and they are the evaluation's: its per-step curve over these 3 tasks
    result = evaluate_rl_run(nav_run, episodes=3, steps=2)
    assert result.curve == pytest.approx(data.returns.double().mean(1).tolist())
    # the lines drawn are those paths
    fig = nav2d_figure(data, shown=2)
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    assert len(lines) == 3 * 3 * 2  # policies x tasks x shown
    for k in range(3):
        for i in range(3):
            for b in range(2):
                xy = lines[f"traj-{k}-{i}-{b}"].get_xydata()
                assert xy == pytest.approx(data.path(k, i, b).numpy())
    moved = data.positions[:, :, :, 1:] - data.positions[:, :, :, :-1]
    assert float(moved.abs().max()) <= family.max_action + 1e-6  # clipped displacements


@pytest.mark.parametrize("family", ["rl_bandit", "rl_pendulum"])
def test_other_families_get_a_sentence_not_a_figure(tmp_path: Path, family: str) -> None:
    run = tmp_path / family
    RLTrainer(tiny(f"{family}_maml"), run, progress=False).fit()
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out), "--episodes", "3"]) == 0
    text = (out / "report.md").read_text()
    assert "No trajectory figure" in text and f"family is {family}" in text
    assert not list(out.glob("trajectories_*.png")) and (out / "adaptation.png").is_file()
    recipe, algo = load_rl_trained(run)
    with pytest.raises(ValueError, match="2D navigation"):
        nav2d_trajectories(algo, rl_sampler(recipe, "test"))


def test_rl_and_supervised_runs_are_not_reported_together(nav_run: Path, tmp_path: Path
                                                          ) -> None:
    supervised = RunDir(tmp_path / "sup")
    supervised.path.mkdir()
    supervised.write_config(load_recipe("sinusoid_maml"))
    with pytest.raises(ValueError, match="meta-RL and supervised runs together"):
        report_runs([nav_run, supervised.path], out=tmp_path / "r")


def test_meta_learners_and_baselines_are_reported_together(nav_run: Path, tmp_path: Path
                                                           ) -> None:
    """MAML, Reptile, ProMP and the two baselines on one page, each scored as `metafit evaluate`
    scores it; only the runs that were trained are called too short."""
    runs = [nav_run]
    for name in ("rl_nav2d_reptile", "rl_nav2d_promp", "rl_nav2d_pretrained",
                 "rl_nav2d_scratch"):
        runs.append(tmp_path / name)
        RLTrainer(tiny(name), runs[-1], progress=False).fit()
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out), "--episodes", "3"]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert list(summary) == ["maml_trpo", "reptile_pg", "promp", "pretrained_trpo",
                             "scratch"]
    for label, run in zip(summary, runs, strict=True):
        assert summary[label]["per_episode"] == evaluate_rl_run(run, episodes=3).per_episode
        assert (out / f"trajectories_{label}.png").is_file()
    warning = next(line for line in (out / "report.md").read_text().splitlines()
                   if "fewer than 100 iterations" in line)
    assert "reptile_pg (4)" in warning and "pretrained_trpo (4)" in warning
    assert "promp (4)" in warning
    assert "scratch" not in warning
