"""The half-cheetah clip of `metafit report`: episodes before and after adaptation on a
forward and a backward task, rendered headless, written as a GIF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")

from metafit.runs.cheetah_video import (  # noqa: E402
    cheetah_clips,
    render_unavailable,
    write_gif,
)
from metafit.runs.report import report_runs  # noqa: E402
from metafit.runs.rl import load_rl_trained, rl_sampler  # noqa: E402
from metafit.training.rl import RLTrainer  # noqa: E402
from test_rl_training import tiny  # noqa: E402

REASON = render_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None,
                                reason=f"MuJoCo cannot render headless here: {REASON}")


@pytest.fixture(scope="module")
def cheetah_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cheetah") / "run"
    RLTrainer(tiny("rl_cheetah_dir_maml", "iterations=2", "val_every=2"), out,
              progress=False).fit()
    return out


def test_clips_show_a_forward_and_a_backward_task_before_and_after(cheetah_run: Path
                                                                   ) -> None:
    recipe, algo = load_rl_trained(cheetah_run)
    clips = cheetah_clips(algo, recipe, rl_sampler(recipe, "test"), size=(32, 24), every=1)
    assert [c.task["direction"] for c in clips] == [1.0, -1.0]
    for clip in clips:
        for frames in clip.frames:  # the reset frame, then one per step of the horizon
            assert frames.shape == (6, 24, 32, 3) and frames.dtype == np.uint8
            assert frames.std() > 0  # a scene, not a blank buffer
        # the adapted policy acts differently, so the bodies end up elsewhere
        assert not np.array_equal(clip.frames[0][-1], clip.frames[1][-1])
        assert clip.returns[0] != clip.returns[1]
    again = cheetah_clips(algo, recipe, rl_sampler(recipe, "test"), size=(32, 24), every=1)
    assert [c.returns for c in again] == [c.returns for c in clips]  # seeded, deterministic


def test_the_gif_has_every_frame_and_a_row_per_task(cheetah_run: Path, tmp_path: Path
                                                    ) -> None:
    from PIL import Image

    recipe, algo = load_rl_trained(cheetah_run)
    clips = cheetah_clips(algo, recipe, rl_sampler(recipe, "test"), size=(40, 30), every=1)
    path = write_gif(clips, tmp_path / "clip.gif")
    with Image.open(path) as gif:
        assert gif.size == (2 * 40, 2 * (30 + 14))
        assert gif.n_frames >= 2
    assert not (tmp_path / "clip.gif.tmp").exists()


def test_a_cheetah_report_links_its_clip(cheetah_run: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    files = report_runs([cheetah_run], out=tmp_path / "report", episodes=2)
    gifs = sorted((tmp_path / "report").glob("cheetah_*.gif"))
    assert len(gifs) == 1
    page = (tmp_path / "report" / "report.md").read_text()
    assert gifs[0].name in page and "before adaptation (left)" in page
    assert any(Path(f).name == "report.md" for f in files)


def test_without_a_renderer_the_report_says_why(cheetah_run: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import metafit.runs.cheetah_video as video

    monkeypatch.setattr(video, "render_unavailable", lambda: "no GL here")
    report_runs([cheetah_run], out=tmp_path / "report", episodes=2)
    assert not list((tmp_path / "report").glob("cheetah_*.gif"))
    assert "No clip: MuJoCo cannot render here (no GL here)" in \
        (tmp_path / "report" / "report.md").read_text()
