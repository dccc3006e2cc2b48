"""metafit.io.written_together: the files of one report replace the old ones together or
not at all; Ctrl-C is held back while they are renamed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from metafit.io import atomic_write_text, deferred_interrupt, written_together


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_the_files_are_replaced_together_or_not_at_all(tmp_path: Path) -> None:
    for name in ("a.json", "b.png"):
        (tmp_path / name).write_text("old")
    with pytest.raises(KeyboardInterrupt), written_together():
        atomic_write_text(tmp_path / "a.json", "new")
        assert (tmp_path / "a.json").read_text() == "old"  # staged, not yet in place
        raise KeyboardInterrupt  # interrupted before b.png was written
    assert _files(tmp_path) == {"a.json": "old", "b.png": "old"}  # no temporaries either
    with written_together():
        atomic_write_text(tmp_path / "a.json", "new")
        atomic_write_text(tmp_path / "b.png", "new")
        atomic_write_text(tmp_path / "c.md", "new")
    assert _files(tmp_path) == {"a.json": "new", "b.png": "new", "c.md": "new"}
    atomic_write_text(tmp_path / "a.json", "alone")  # outside a block: at once
    assert (tmp_path / "a.json").read_text() == "alone"


def test_ctrl_c_during_the_renames_waits_for_them(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        (tmp_path / "done").write_text("1")  # still runs: the interrupt waits
    assert (tmp_path / "done").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupted_rescore_leaves_the_previous_report_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy_fixtures import image_run, support_folder
    from metafit.cli.main import main

    support = support_folder(tmp_path / "support")
    model, out = tmp_path / "m", tmp_path / "ev"
    assert main(["adapt", str(image_run()), "--support", str(support), "--out",
                 str(model)]) == 0
    assert main(["evaluate", str(model), "--test", str(support), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"test_report.json", "confusion.png", "reliability.png"}
    import metafit.runs.test_set_plots as plots

    def interrupted(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt  # after test_report.json and confusion.png were written

    monkeypatch.setattr(plots, "reliability_figure", interrupted)
    (out / "test_report.json").write_bytes(b'{"marker": 1}')  # so a rewrite would show
    before["test_report.json"] = b'{"marker": 1}'
    assert main(["evaluate", str(model), "--test", str(support), "--out", str(out)]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
