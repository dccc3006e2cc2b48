"""Versions of an adapted model directory: an update adapts again on the union of the
stored support set and new examples (existing and new classes) into a new version, refits
what the old one had fitted (temperature, reject threshold), rollback, version-less
directories loading unchanged, and distinct versions from concurrent writers."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from deploy_fixtures import image_run, pattern, support_folder
from metafit.cli.main import main
from metafit.deploy import AdaptedModel, Adapter, ModelDirError, SupportError
from metafit.deploy.calibrate import fit_on_support
from metafit.deploy.reject import RejectRequest
from metafit.deploy.update import update_from_file, update_model
from metafit.deploy.versions import (
    CURRENT,
    add_version,
    current_version,
    list_versions,
    set_current,
    version_dir,
)


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.from_run(image_run())


def images(classes: range, per_class: int, first: int = 0) -> tuple[list, list[str]]:
    """uint8 images of the deploy fixtures' classes and their labels ``label_c``."""
    xs, ys = [], []
    for c in classes:
        for i in range(first, first + per_class):
            xs.append(pattern(c, i))
            ys.append(f"label_{c}")
    return xs, ys


@pytest.fixture
def home(adapter: Adapter, tmp_path: Path) -> Path:
    """Version 1: 2 classes, 2 examples each, calibrated, with a reject setting."""
    xs, ys = images(range(2), 2)
    model = adapter.adapt(xs, ys)
    model = fit_on_support(model, adapter.adapt_tensors, True, RejectRequest(recall=0.9))
    return model.save(tmp_path / "model")


def test_a_version_less_directory_is_version_one(home: Path) -> None:
    assert not (home / CURRENT).exists()
    assert current_version(home) == 1
    [only] = list_versions(home)
    assert (only.version, only.parent, only.current, only.support_size) == (1, None, True, 4)
    assert only.classes == ["label_0", "label_1"]


def test_update_adds_examples_and_classes_and_refits(home: Path, adapter: Adapter) -> None:
    before = AdaptedModel.load(home)
    xs, ys = images(range(3), 2, first=2)  # more of the two classes, and a new one
    number, model = update_model(home, xs, ys, adapter)
    assert number == 2 and current_version(home) == 2
    loaded = AdaptedModel.load(home)
    assert loaded.label_names == ["label_0", "label_1", "label_2"] == model.label_names
    assert loaded.info["support_size"] == 10
    assert loaded.info["update"]["parent"] == 1 and loaded.info["update"]["added"] == 6
    assert loaded.info["update"]["new_classes"] == ["label_2"]
    assert loaded.support is not None and before.support is not None
    assert torch.equal(loaded.support[0][:4], before.support[0])  # the old examples first
    # refitted on the union: the calibration and the reject threshold at the same recall
    assert loaded.info["calibration"]["held_out"] == 10
    assert loaded.reject is not None and before.reject is not None
    assert loaded.reject.recall == before.reject.recall == 0.9
    assert loaded.reject.fitted["held_out"] == 10
    assert loaded.predict([pattern(2, 7)])[0]["label"] == "label_2"
    # version 1 is untouched and still loads on its own
    assert AdaptedModel.load(home, 1).label_names == ["label_0", "label_1"]
    rows = list_versions(home)
    assert [(r.version, r.parent, r.added, r.current) for r in rows] == [
        (1, None, None, False), (2, 1, 6, True)]


def test_rollback_and_roll_forward(home: Path, adapter: Adapter) -> None:
    update_model(home, *images(range(3), 1, first=2), adapter)
    set_current(home, 1)
    assert AdaptedModel.load(home).label_names == ["label_0", "label_1"]
    number, model = update_model(home, *images(range(2), 1, first=3), adapter)
    assert number == 3 and model.info["update"]["parent"] == 1  # built on what was served
    assert model.label_names == ["label_0", "label_1"]
    set_current(home, 2)
    assert len(AdaptedModel.load(home).label_names) == 3
    with pytest.raises(ValueError, match="no version 7"):
        set_current(home, 7)
    with pytest.raises(ValueError, match="1 to 9999"):
        set_current(home, 0)


def test_bad_updates_are_refused_and_write_nothing(home: Path, adapter: Adapter) -> None:
    with pytest.raises(SupportError, match="label must be a non-empty string"):
        update_model(home, [pattern(0, 5)], [""], adapter)
    with pytest.raises(SupportError, match="1 inputs but 2 labels"):
        update_model(home, [pattern(0, 5)], ["label_0", "label_1"], adapter)
    with pytest.raises(SupportError, match="unknown label"):
        update_model(home, [pattern(0, 5)], ["unknown"], adapter)  # the reject label
    with pytest.raises(SupportError):
        update_model(home, [b"not an image"], ["label_0"], adapter)
    assert current_version(home) == 1 and not list((home / "versions").glob("v*"))


def test_a_corrupt_pointer_is_named(home: Path) -> None:
    (home / CURRENT).write_text("seven\n")
    with pytest.raises(ModelDirError, match="version number"):
        AdaptedModel.load(home)
    (home / CURRENT).write_text("5\n")  # no such version
    with pytest.raises(ModelDirError, match="does not exist"):
        AdaptedModel.load(home)


def test_concurrent_writers_claim_distinct_versions(home: Path) -> None:
    """Writers without the lock (as on a file system without working locks) still get
    distinct, complete versions: the rename claim."""
    model = AdaptedModel.load(home)
    numbers: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            numbers.append(add_version(home, model, make_current=False))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(numbers) == [2, 3, 4, 5]
    for n in numbers:
        assert AdaptedModel.load(home, n).label_names == model.label_names
    assert not [p for p in (home / "versions").iterdir() if p.name.startswith(".")]


def test_concurrent_updates_serialise(home: Path, adapter: Adapter) -> None:
    """Two updates at once: the lock makes the second build on the first, so no
    examples are lost."""
    batches = [images(range(2), 1, first=4), images(range(2), 1, first=5)]
    done: list[int] = []
    threads = [threading.Thread(target=lambda b=b: done.append(update_model(
        home, b[0], b[1], adapter)[0])) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == [2, 3]
    assert AdaptedModel.load(home).info["support_size"] == 8
    assert [r.parent for r in list_versions(home)] == [None, 1, 2]


def test_update_from_a_moved_run_needs_the_run(tmp_path: Path, adapter: Adapter) -> None:
    xs, ys = images(range(2), 2)
    model = adapter.adapt(xs, ys)
    model.info["source"] = {"run": str(tmp_path / "gone"), "checkpoint": "best"}
    home = model.save(tmp_path / "m")
    new = support_folder(tmp_path / "new", 2, 1)
    with pytest.raises(ValueError, match="is not there"):
        update_from_file(home, new)
    number, _ = update_from_file(home, new, run=image_run())
    assert number == 2 and os.path.isdir(version_dir(home, 2))

def test_cli_update_versions_rollback_and_evaluate(tmp_path: Path, capsys) -> None:
    run = image_run()
    out = tmp_path / "model"
    assert main(["adapt", str(run), "--support", str(support_folder(tmp_path / "s1", 2, 2)),
                 "--out", str(out), "--calibrate"]) == 0
    new = support_folder(tmp_path / "s2", 3, 2)
    capsys.readouterr()
    assert main(["adapt", "--update", str(out), "--support", str(new), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["version"] == 2 and made["parent"] == 1 and made["support_size"] == 10
    assert made["labels"] == ["label_0", "label_1", "label_2"] and made["out"] == str(out)
    assert main(["versions", str(out), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["current"] == 2 and [v["version"] for v in listed["versions"]] == [1, 2]
    assert main(["versions", str(out), "--use", "1"]) == 0
    assert "version 1 is now current" in capsys.readouterr().out
    assert AdaptedModel.load(out).label_names == ["label_0", "label_1"]
    test = support_folder(tmp_path / "test", 3, 3)
    assert main(["evaluate", str(out), "--test", str(test), "--versions", "all",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["protocol"] == "versions" and [r["version"] for r in rows["rows"]] == [1, 2]
    assert rows["rows"][1]["accuracy"] >= rows["rows"][0]["accuracy"]  # knows label_2
    assert rows["rows"][0]["current"] and not rows["rows"][1]["current"]
    assert main(["evaluate", str(out), "--test", str(test), "--versions", "2"]) == 0
    assert "version" in capsys.readouterr().out
    assert main(["versions", str(out), "--use", "9"]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert main(["adapt", "--update", str(out), "--support", str(new), "--out", "x"]) == 2
    assert "--out" in capsys.readouterr().err




def test_updating_a_compressed_model_warns_that_the_new_version_is_not(
        adapter: Adapter, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from metafit.deploy.compress import prune

    xs, ys = images(range(2), 2)
    home = prune(adapter.adapt(xs, ys), 0.5).save(tmp_path / "model")
    new_xs, new_ys = images(range(2), 1, first=5)
    with caplog.at_level(logging.WARNING, logger="metafit.deploy.update"):
        number, model = update_model(home, new_xs, new_ys, adapter)
    assert number == 2 and "was compressed" in caplog.text
    assert not model.compression.get("prune")
    assert AdaptedModel.load(home, 1).compression["prune"]["amount"] == 0.5


def test_deleting_a_version_keeps_its_number_retired(home: Path, adapter: Adapter,
                                                      capsys) -> None:
    from metafit.deploy.versions import delete_version

    update_model(home, *images(range(2), 1, first=5), adapter)  # v2
    update_model(home, *images(range(2), 1, first=6), adapter)  # v3, current
    with pytest.raises(ValueError, match="the one it serves"):
        delete_version(home, 3)
    with pytest.raises(ValueError, match="delete the whole directory"):
        delete_version(home, 1)
    with pytest.raises(ValueError, match="no version 9"):
        delete_version(home, 9)
    set_current(home, 2)
    delete_version(home, 3)
    assert [v.version for v in list_versions(home)] == [1, 2]
    assert not version_dir(home, 3).exists()
    assert not [p for p in (home / "versions").iterdir() if p.name.startswith(".del-")]
    number, _ = update_model(home, *images(range(2), 1, first=7), adapter)
    assert number == 4  # 3 is never given again
    with pytest.raises(ValueError, match="no version 3"):
        set_current(home, 3)
    assert main(["versions", str(home), "--use", "2", "--delete", "4", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["current"] == 2 and [v["version"] for v in listed["versions"]] == [1, 2]
    assert AdaptedModel.load(home).label_names == ["label_0", "label_1"]


def test_planted_links_in_a_model_directory_are_refused(home: Path, adapter: Adapter,
                                                        tmp_path: Path) -> None:
    from metafit.deploy.versions import delete_version

    update_model(home, *images(range(2), 1, first=5), adapter)  # v2, current
    set_current(home, 1)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    os.symlink(victim, home / "versions" / "deleted-v0002")  # a received directory's trap
    with pytest.raises(ModelDirError, match="deleted-v0002 exists and is not a plain file"):
        delete_version(home, 2)
    assert victim.read_text() == "the user's file"  # not truncated
    assert version_dir(home, 2).is_dir()
    (home / ".lock").unlink()  # made by the update above
    os.symlink(victim, home / ".lock")
    with pytest.raises(ModelDirError, match=r"\.lock cannot be opened as the update lock"):
        set_current(home, 2)
    assert victim.read_text() == "the user's file"


def test_forged_adaptation_fields_are_refused_on_loading(home: Path) -> None:
    from test_model_dir_safety import _rewrite  # edits a file and relists its checksum

    def forge(edit: Any) -> None:
        def adaptation(data: bytes) -> bytes:
            spec = json.loads(data)
            edit(spec["adaptation"])
            return json.dumps(spec).encode()

        _rewrite(home, "model.json", adaptation)

    forge(lambda a: a.__setitem__("steps", 10**9))  # an update would adapt with them
    with pytest.raises(ModelDirError, match=r"adaptation.steps must be an integer 0\.\.10000"):
        AdaptedModel.load(home)
    forge(lambda a: a.update(steps=2, source=7))
    with pytest.raises(ModelDirError, match="adaptation.source must be a JSON object"):
        AdaptedModel.load(home)


def test_an_update_killed_before_the_pointer_moved_is_never_served(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # killed between claiming versions/v0002 and writing `current`: the version must be
    # neither listed nor usable, and the next update takes its place
    import metafit.deploy.versions as versions

    model = AdaptedModel.load(home)

    def killed(home: Path, n: int) -> None:
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after it runs

    monkeypatch.setattr(versions, "_write_pointer", killed)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: the claimed version is undone
        add_version(home, model)
    assert not version_dir(home, 2).exists() and current_version(home) == 1
    assert not [p for p in (home / "versions").iterdir() if p.name.startswith(".new-")]
    monkeypatch.setattr(versions.shutil, "rmtree", lambda *a, **k: None)  # SIGKILL: no
    with pytest.raises(KeyboardInterrupt):                                # clean-up runs
        add_version(home, model)
    monkeypatch.undo()
    assert version_dir(home, 2).is_dir() and current_version(home) == 1
    assert [v.version for v in list_versions(home)] == [1]
    with pytest.raises(ValueError, match="has no version 2"):
        set_current(home, 2)
    assert add_version(home, model) == 2  # the orphan was removed, its number free
    assert current_version(home) == 2 and [v.version for v in list_versions(home)] == [1, 2]
    assert not (version_dir(home, 2) / versions.UNCOMMITTED).exists()
    # Ctrl-C while the pointer moves: held back until the version is current, then raised
    def interrupt_midway(home: Path, n: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real(home, n)

    real = versions._write_pointer
    monkeypatch.setattr(versions, "_write_pointer", interrupt_midway)
    with pytest.raises(KeyboardInterrupt):
        add_version(home, model)
    monkeypatch.undo()
    assert current_version(home) == 3
    assert not (version_dir(home, 3) / versions.UNCOMMITTED).exists()
    versions.set_current(home, 2)
    # killed after the pointer moved but before the marker went: it is served and kept
    (version_dir(home, 2) / versions.UNCOMMITTED).write_bytes(b"")
    assert [v.version for v in list_versions(home)] == [1, 2, 3]
    set_current(home, 3)  # a rollback away from it: it was served, so it stays
    assert [v.version for v in list_versions(home)] == [1, 2, 3]
    assert add_version(home, model) == 4
    assert not (version_dir(home, 2) / versions.UNCOMMITTED).exists()
    assert AdaptedModel.load(home, 2).label_names == model.label_names
