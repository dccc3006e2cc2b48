"""Run directories from strangers and runs that crashed: a pickled payload in a checkpoint
never runs, on any entry point; a corrupt newest checkpoint resumes from the one before;
a torn metrics line is cut; a second trainer is kept out of a busy directory. Forged to
exhaust memory, write outside, or crash the reader (review of 2026-12-06): compressed
checkpoint records, a linked ``report/``, oversized or deeply nested run files, checkpoint
fields of the wrong types, each refused with one line naming the file and field."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from metafit.cli.main import main
from metafit.io import check_tensor_archive, parse_json, read_bounded
from metafit.runs.digest import content_digest
from metafit.runs.directory import (
    CHECKSUM,
    MAX_STATUS_BYTES,
    CheckpointError,
    RunDir,
    RunDirError,
    load_checkpoint,
    previous_version,
)
from metafit.runs.lock import RunLockedError
from metafit.runs.trained import load_trained
from metafit.training.callbacks import Callback
from metafit.training.trainer import Trainer
from test_trainer import (
    assert_same_metrics,
    classification_recipe,
    image_folder,
    interrupt_at,
    regression_recipe,
)


class Exploit:
    """Unpickling it calls ``os.mkdir(marker)``: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small image folder and a ProtoNet run trained on it."""
    root = tmp_path_factory.mktemp("safety")
    data = image_folder(root / "data")
    run = root / "run"
    Trainer(classification_recipe(data, "protonet", iterations=2, val_every=2), run,
            progress=False).fit()
    return data, run


def poisoned(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``run`` whose checkpoints carry an :class:`Exploit` (and no previous
    versions to fall back on); returns ``(the copy, the marker it would create)``."""

    copy = tmp_path / "received_run"
    shutil.copytree(run, copy)
    marker = tmp_path / "pwned"
    for which in ("best", "last"):
        path = RunDir(copy).checkpoint(which)
        data = torch.load(path, weights_only=True)
        data["evil"] = Exploit(marker)
        torch.save(data, path)
        previous_version(path).unlink(missing_ok=True)
    return copy, marker


def test_the_payload_runs_when_unpickled(tmp_path: Path) -> None:
    """The exploit is real: a plain unpickling of the file creates the marker."""
    marker = tmp_path / "pwned"
    torch.save({"evil": Exploit(marker)}, tmp_path / "x.pt")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize("verb", ["adapt", "evaluate", "report"])
def test_no_verb_runs_a_checkpoint_payload(shared: tuple[Path, Path], tmp_path: Path,
                                           verb: str, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    data, run = shared
    copy, marker = poisoned(run, tmp_path)
    args = {"adapt": ["adapt", str(copy), "--support", str(data), "--out",
                      str(tmp_path / "model")],
            "evaluate": ["evaluate", str(copy), "--episodes", "2"],
            "report": ["report", str(copy), "--episodes", "2"]}[verb]
    assert main(args) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "never loads" in err and "best.pt" in err


def test_the_server_refuses_a_checkpoint_payload(shared: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from metafit.server import ServerSettings, create_app

    copy, marker = poisoned(shared[1], tmp_path)
    with pytest.raises(CheckpointError, match="never loads"):
        create_app(ServerSettings(target=copy))
    assert not marker.exists()


def test_resume_and_init_from_refuse_a_checkpoint_payload(shared: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    data, run = shared
    copy, marker = poisoned(run, tmp_path)
    recipe = classification_recipe(data, "protonet", iterations=4, val_every=2)
    with pytest.raises(CheckpointError, match="never loads"):
        Trainer(recipe, copy, progress=False).fit()  # resume
    warm = classification_recipe(data, "protonet", iterations=2, val_every=2,
                                 init_from=str(copy))
    with pytest.raises(CheckpointError, match="never loads"):
        Trainer(warm, tmp_path / "warm", progress=False).fit()
    assert not marker.exists()
    assert not (tmp_path / "warm").exists()  # a failed start leaves no directory


def _flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte inside the stored bytes of a tensor (not the zip's structure)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with path.open("rb") as f:  # the record's data follows its local header
            f.seek(info.header_offset + 26)
            name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        start = info.header_offset + 30 + name_len + extra_len
    raw = bytearray(path.read_bytes())
    raw[start + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_is_caught_and_the_previous_checkpoint_used(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recipe = regression_recipe("maml")
    broken = tmp_path / "broken"
    trainer = Trainer(recipe, broken, progress=False)
    interrupt_at(trainer, 6)  # checkpoints at 2 and 4: last.pt is 4, last.previous.pt 2
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    last = RunDir(broken).checkpoint("last")
    _flip_a_tensor_byte(last)
    with caplog.at_level(logging.WARNING, logger="metafit.runs.directory"):
        data = load_checkpoint(last)
    assert data["state"]["iteration"] == 2
    assert "does not match its content digest" in caplog.text
    assert "last.previous.pt" in caplog.text
    # Resuming from iteration 2 ends where an uninterrupted run ends.
    full = tmp_path / "full"
    Trainer(recipe, full, progress=False).fit()
    Trainer(recipe, broken, progress=False).fit()
    assert_same_metrics(RunDir(full), RunDir(broken))


def test_a_truncated_last_checkpoint_resumes_from_the_previous(tmp_path: Path) -> None:
    recipe = regression_recipe("maml")
    broken = tmp_path / "broken"
    trainer = Trainer(recipe, broken, progress=False)
    interrupt_at(trainer, 6)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    last = RunDir(broken).checkpoint("last")
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    Trainer(recipe, broken, progress=False).fit()
    full = tmp_path / "full"
    Trainer(recipe, full, progress=False).fit()
    assert_same_metrics(RunDir(full), RunDir(broken))


def test_a_torn_metrics_line_is_cut_on_resume(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    recipe = regression_recipe("maml")
    broken = RunDir(tmp_path / "broken")
    trainer = Trainer(recipe, broken.path, progress=False)
    interrupt_at(trainer, 6)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    lines = broken.metrics.read_text().splitlines()
    torn = len(lines) + 1
    with broken.metrics.open("a") as f:  # a crash in the middle of writing a record
        f.write('{"iteration": 5, "split": "train", "loss": 0.1')
    with caplog.at_level(logging.WARNING, logger="metafit.runs.directory"):
        Trainer(recipe, broken.path, progress=False).fit()
    assert f"metrics.jsonl, line {torn}: an incomplete record" in caplog.text
    full = RunDir(tmp_path / "full")
    Trainer(recipe, full.path, progress=False).fit()
    assert_same_metrics(full, broken)


def test_a_bad_metrics_line_inside_the_file_names_file_and_line(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.metrics.write_text('{"iteration": 1}\nnot json\n{"iteration": 2}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 2: not a JSON record"):
        run.read_metrics()


def test_a_second_trainer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    recipe = regression_recipe("maml")
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from metafit.runs.lock import RunLock; "
         f"lock = RunLock({str(out)!r}); lock.acquire(); print('held', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"in use by another metafit process "
                           f"\\(PID {holder.pid} "):
            Trainer(recipe, out, progress=False).fit()
        assert not RunDir(out).metrics.exists()  # nothing was written
    finally:
        holder.communicate("")
    # The holder is gone: its lock is taken over.
    assert Trainer(recipe, out, progress=False).fit().iteration == recipe.iterations


def test_the_lock_of_a_killed_trainer_is_taken_over(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{dead.pid} otherhost 2026-01-01T00:00:00\n")
    recipe = regression_recipe("maml")
    with caplog.at_level(logging.WARNING, logger="metafit.runs.lock"):
        assert Trainer(recipe, out, progress=False).fit().iteration == recipe.iterations
    assert f"lock left by PID {dead.pid} on otherhost" in caplog.text
    assert (out / ".lock").read_text() == ""  # released


def test_checkpoints_load_without_pickle_and_carry_their_digest(tmp_path: Path) -> None:
    recipe = regression_recipe("maml")
    Trainer(recipe, tmp_path / "run", progress=False).fit()
    path = RunDir(tmp_path / "run").checkpoint("last")
    raw = torch.load(path, weights_only=True)  # tensors and plain values only
    assert len(raw["content_sha256"]) == 64
    assert load_checkpoint(path)["state"]["iteration"] == recipe.iterations
    status = json.loads(RunDir(tmp_path / "run").status_file.read_text())
    assert status["status"] == "complete"


def test_a_forged_run_config_is_refused_before_it_is_allocated(shared: tuple[Path, Path],
                                                              tmp_path: Path) -> None:

    copy = Path(shutil.copytree(shared[1], tmp_path / "received"))
    config = RunDir(copy).config
    # 10^5 filters per convolution: ~360 GB of weights if it were built for real.
    config.write_text(config.read_text().replace("hidden: 4", "hidden: 100000"))
    with pytest.raises(CheckpointError, match="different architecture"):
        load_trained(copy)


def test_a_binary_run_config_names_the_file(shared: tuple[Path, Path], tmp_path: Path) -> None:

    copy = Path(shutil.copytree(shared[1], tmp_path / "received"))
    RunDir(copy).config.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ValueError, match=r"config.yaml, line 1: not valid UTF-8"):
        load_trained(copy)


class _FailAtFirstStep(Callback):
    """Raises after the first iteration (logged, before any checkpoint): a start that
    fails after the directory is written."""

    def on_step_end(self, iteration: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("broken at start")


def test_a_start_that_failed_before_a_checkpoint_does_not_pin_the_recipe(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="broken at start"):
        Trainer(regression_recipe("maml", iterations=2), out, progress=False,
                callbacks=[_FailAtFirstStep()]).fit()
    assert RunDir(out).status()["status"] == "failed"  # the failure is recorded...
    state = Trainer(regression_recipe("maml", iterations=3, inner_lr=0.05), out,
                    progress=False).fit()  # ...and another recipe may start there
    assert state.iteration == 3
    assert RunDir(out).read_recipe().inner_lr == 0.05
    # no records of the failed start (it logged iteration 1 before failing)
    assert [r["iteration"] for r in RunDir(out).read_metrics() if r["split"] == "train"] \
        == [1, 2, 3]


def test_a_run_with_a_checkpoint_still_refuses_another_recipe(tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(regression_recipe("maml", iterations=2), out, progress=False).fit()
    with pytest.raises(ValueError, match="differs in inner_lr"):
        Trainer(regression_recipe("maml", iterations=2, inner_lr=0.05), out, progress=False).fit()
    Trainer(regression_recipe("maml", iterations=2, tensorboard=True), out, progress=False).fit()
    assert RunDir(out).is_finished()


def test_the_files_of_a_failed_start_include_the_mlflow_run_file() -> None:
    from metafit.runs.session import UNSTARTED_FILES
    from metafit.training.mlflow_logger import RUN_FILE

    assert RUN_FILE in UNSTARTED_FILES


# -- forged to exhaust memory, write outside, or crash the reader (review 2026-12-06) --

def received(run: Path, tmp_path: Path, running: bool = False) -> RunDir:
    """A copy of ``run`` without previous checkpoint versions; ``running``: its status
    says training was interrupted (so training again resumes it)."""
    copy = RunDir(shutil.copytree(run, tmp_path / "received"))
    for which in ("best", "last"):
        previous_version(copy.checkpoint(which)).unlink(missing_ok=True)
    if running:
        copy.set_status("running", iteration=2)
    return copy


def forge(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit checkpoint ``path`` and give it a matching digest (an attacker can)."""
    data = torch.load(path, weights_only=True)
    data.pop(CHECKSUM)
    edit(data)
    data[CHECKSUM] = content_digest(data)
    torch.save(data, path)


def deflated(path: Path) -> None:
    """Rewrite the torch archive ``path`` with every record DEFLATE-compressed."""
    with zipfile.ZipFile(path) as src:
        records = [(info.filename, src.read(info)) for info in src.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name, data in records:
            dst.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    path.write_bytes(buf.getvalue())


def test_a_compressed_checkpoint_is_refused_before_it_is_inflated(
        shared: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run = received(shared[1], tmp_path)
    for which in ("best", "last"):
        # 64 MB of zeros that compress to ~64 KB: inflated only if torch.load ran.
        forge(run.checkpoint(which), lambda d: d.__setitem__("pad", torch.zeros(2**24)))
        deflated(run.checkpoint(which))
        assert run.checkpoint(which).stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"record '.*data.pkl' is compressed"):
        load_checkpoint(run.checkpoint("best"))
    assert main(["evaluate", str(run.path), "--episodes", "2"]) == 2
    assert "is compressed" in capsys.readouterr().err


def test_records_larger_than_the_file_and_non_archives_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"x": torch.arange(4)}, buf)
    check_tensor_archive(buf.getvalue(), "ok.pt")  # what torch.save writes passes
    with pytest.raises(ValueError, match="legacy.pt is corrupt or truncated .not a torch "
                                         "archive"):
        check_tensor_archive(b"\x80\x02}q\x00.", "legacy.pt")
    forged = bytearray(buf.getvalue())
    first = forged.find(b"PK\x01\x02")  # the first record's central directory entry
    forged[first + 24:first + 28] = (2**31).to_bytes(4, "little")  # its size: 2 GB
    with pytest.raises(ValueError, match="declare .* more than the file"):
        check_tensor_archive(bytes(forged), "forged.pt")


def test_a_report_folder_linked_elsewhere_is_neither_written_nor_swept(
        shared: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, trained = shared
    victim = tmp_path / "victim"
    victim.mkdir()
    keep = victim / ".notes.tmp"  # looks like an unfinished write, an hour old
    keep.write_text("the victim's data")
    old = time.time() - 3600
    os.utime(keep, (old, old))
    run = received(trained, tmp_path, running=True)
    shutil.rmtree(run.path / "report", ignore_errors=True)
    os.symlink(victim, run.path / "report")
    assert main(["evaluate", str(run.path), "--episodes", "2"]) == 2
    assert "report is a symbolic link" in capsys.readouterr().err
    with pytest.raises(RunDirError, match="report is a symbolic link"):
        Trainer(classification_recipe(data, "protonet", iterations=4, val_every=2), run.path,
                progress=False).fit()
    assert keep.read_text() == "the victim's data"
    assert sorted(p.name for p in victim.iterdir()) == [".notes.tmp"]


def test_oversized_and_deeply_nested_run_files_are_one_line_errors(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with open(run.status_file, "wb") as f:  # sparse: no disk, but over the limit
        f.truncate(MAX_STATUS_BYTES + 1)
    with pytest.raises(RunDirError, match=r"status.json is \d+ bytes, over the limit"):
        run.status()
    run.status_file.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RunDirError, match="status.json is nested too deeply"):
        run.status()
    run.metrics.write_text('{"iteration": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n{}\n")
    with pytest.raises(RunDirError, match=r"metrics.jsonl, line 2: not a JSON record"):
        run.read_metrics()
    run.status_file.unlink()
    os.mkfifo(run.status_file)  # would block a plain read forever
    assert run.status() == {"status": "missing"}  # not read, so not waited on
    with pytest.raises(ValueError, match="not a regular file"):
        read_bounded(run.status_file, 100)


def test_json_and_bounded_reads_name_what_they_refuse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="x.json is not valid JSON"):
        parse_json(b'{"n": ' + b"9" * 5000 + b"}", "x.json")  # over Python's digit limit
    target = tmp_path / "target"
    target.write_text("{}")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link"):
        read_bounded(tmp_path / "link", 100)
    assert read_bounded(target, 2) == b"{}"
    with pytest.raises(ValueError, match="over the limit of 1"):
        read_bounded(target, 1)


@pytest.mark.parametrize("field, edit, message", [
    ("algorithm", lambda d: d["algorithm"].__setitem__(next(iter(d["algorithm"])), 3),
     "'algorithm' state must map parameter names to tensors"),
    ("algorithm", lambda d: d.__setitem__("algorithm", list(d["algorithm"])),
     "'algorithm' state must map parameter names to tensors"),
    ("state", lambda d: d.__setitem__("state", [1]), "'state' .* must be a mapping"),
])
def test_checkpoint_fields_of_the_wrong_type_are_refused_on_reading(
        shared: tuple[Path, Path], tmp_path: Path, field: str, edit: Any, message: str,
        capsys) -> None:
    run = received(shared[1], tmp_path)
    for which in ("best", "last"):
        forge(run.checkpoint(which), edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(run.checkpoint("best"))
    assert main(["evaluate", str(run.path), "--episodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "best.pt" in err


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("optimizer"), r"its 'optimizer' cannot be restored .*KeyError"),
    (lambda d: d.__setitem__("world_size", [2]), "'world_size' must be a positive integer"),
    (lambda d: d.__setitem__("sampler", {"bogus": 1}), "its 'sampler' cannot be restored"),
    (lambda d: d.__setitem__("state", {"iteration": "x"}),
     "'state' must be the trainer's counters, with an integer 'iteration'"),
])
def test_a_forged_checkpoint_does_not_resume_and_says_which_field(
        shared: tuple[Path, Path], tmp_path: Path, edit: Any, message: str) -> None:
    data, trained = shared
    run = received(trained, tmp_path, running=True)
    forge(run.checkpoint("last"), edit)
    before = run.checkpoint("last").read_bytes()
    with pytest.raises(CheckpointError, match=message):
        Trainer(classification_recipe(data, "protonet", iterations=4, val_every=2), run.path,
                progress=False).fit()
    assert run.checkpoint("last").read_bytes() == before  # nothing overwritten


def test_an_atomic_write_syncs_the_file_then_its_directory(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from metafit.io import atomic_write_bytes

    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    atomic_write_bytes(tmp_path / "status.json", b"{}")
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".status.json.")  # the data, before the rename
    assert synced[1] == str(tmp_path)  # then the rename, in its directory
    assert (tmp_path / "status.json").read_bytes() == b"{}"
