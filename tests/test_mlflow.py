"""MLflow tracking against a real local store (SQLite in tmp_path), read back with
MlflowClient: the recipe as parameters, every logged metric at its iteration, the run's
files as artifacts, the final status; a resumed run continues its MLflow run; without
mlflow a recipe asking for it fails before its run directory exists."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from metafit.runs.directory import RunDir
from metafit.training.callbacks import Callback
from metafit.training.mlflow_logger import MAX_PARAM_LENGTH, RUN_FILE, flat_params
from metafit.training.trainer import Trainer
from test_trainer import regression_recipe


def tracked(**extra: Any) -> Any:
    values: dict[str, Any] = dict(iterations=4, val_every=2, log_every=1, threads=1,
                                  mlflow=True)
    values.update(extra)
    return regression_recipe("maml", **values)


def client_for(uri: str) -> Any:
    mlflow = pytest.importorskip("mlflow")
    return mlflow.MlflowClient(tracking_uri=uri)


def run_of(out: Path) -> tuple[Any, Any]:
    """The client of ``out``'s store and ``out``'s MLflow run."""
    saved = json.loads((out / RUN_FILE).read_text())
    client = client_for(saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_run_is_logged_to_the_default_store(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    Trainer(tracked(), out, progress=False).fit()

    client, run = run_of(out)
    assert client.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    assert (tmp_path / "mlflow.db").is_file()
    assert client.get_experiment(run.info.experiment_id).name == "sin_maml"
    assert run.info.run_name == "sin_maml" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["inner_lr"] == "0.01" and params["algorithm"] == "maml"
    assert params["iterations"] == "4" and params["mlflow"] == "true"
    assert params["patience"] == "null"
    assert run.data.tags["metafit.run_dir"] == str(out.resolve())

    records = RunDir(out).read_metrics()
    train = [(r["iteration"], r["loss"]) for r in records if r["split"] == "train"]
    val = [(r["iteration"], r["mse"]) for r in records if r["split"] == "val"]
    assert [i for i, _ in train] == [1, 2, 3, 4] and [i for i, _ in val] == [2, 4]
    assert history(client, run.info.run_id, "train/loss") == train  # floats, exactly
    assert history(client, run.info.run_id, "val/mse") == val
    assert {"train/lr", "train/seconds", "val/ci95"} <= set(run.data.metrics)

    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"config.yaml", "metrics.jsonl", "status.json"}  # no checkpoints
    local = Path(client.download_artifacts(run.info.run_id, "metrics.jsonl", str(tmp_path)))
    assert local.read_bytes() == RunDir(out).metrics.read_bytes()
    # the artifacts of a local SQLite store lie beside it, not in the working directory
    assert (tmp_path / "mlartifacts").is_dir()


def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'store.db').as_posix()}"
    client = client_for(uri)
    out = tmp_path / "run"
    Trainer(tracked(iterations=2, mlflow_uri=uri, mlflow_experiment="exp"), out,
            progress=False).fit()
    first = json.loads((out / RUN_FILE).read_text())["run_id"]
    assert client.get_run(first).info.status == "FINISHED"

    Trainer(tracked(iterations=4, mlflow_uri=uri, mlflow_experiment="exp"), out,
            progress=False).fit()
    client, run = run_of(out)
    assert run.info.run_id == first and run.info.status == "FINISHED"
    experiment = client.get_experiment_by_name("exp")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    steps = [s for s, _ in history(client, first, "train/loss")]
    assert steps == [1, 2, 3, 4]
    assert run.data.params["iterations"] == "2"  # an MLflow parameter cannot change
    assert json.loads(run.data.tags["metafit.resume_changes"]) == {"iterations": ["2", "4"]}


class Broken(Callback):
    def on_step_end(self, iteration: int, metrics: dict[str, float]) -> None:
        if iteration == 2:
            raise RuntimeError("broken")


def test_a_failed_run_is_failed_in_mlflow(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'store.db').as_posix()}"
    client_for(uri)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="broken"):
        Trainer(tracked(mlflow_uri=uri), out, progress=False, callbacks=[Broken()]).fit()
    client, run = run_of(out)
    assert run.info.status == "FAILED"
    local = client.download_artifacts(run.info.run_id, "status.json", str(tmp_path))
    status = json.loads(Path(local).read_text())
    assert status["status"] == "failed"


def test_without_mlflow_the_run_fails_before_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow fails
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"metafit\[track\]"):
        Trainer(tracked(), out, progress=False)
    assert not out.exists()


def test_params_are_flat_strings_within_mlflows_limit() -> None:
    flat = flat_params({"a": 1, "b": None, "c": "text", "d": {"e": [1, 2], "f": {}},
                        "g": True, "h": "x" * 600})
    assert flat == {"a": "1", "b": "null", "c": "text", "d.e": "[1, 2]", "d.f": "{}",
                    "g": "true", "h": "x" * (MAX_PARAM_LENGTH - 3) + "..."}


def test_an_adapted_model_is_logged_as_an_mlflow_model_beside_its_training_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    mlflow = pytest.importorskip("mlflow")
    from deploy_fixtures import image_run, support_folder
    from metafit.cli.main import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"  # an image run trained with mlflow=true
    (tmp_path / "run").mkdir()
    for item in image_run("protonet").iterdir():  # copy the shared fixture run
        target = run / item.name
        if item.is_dir():
            import shutil

            shutil.copytree(item, target)
        else:
            target.write_bytes(item.read_bytes())
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    client = client_for(uri)
    experiment = client.create_experiment("tiny", artifact_location=(
        tmp_path / "mlartifacts").as_uri())
    training = client.create_run(experiment, run_name="tiny_protonet")
    client.set_terminated(training.info.run_id)
    (run / RUN_FILE).write_text(json.dumps({"tracking_uri": uri,
                                             "run_id": training.info.run_id}))
    support = support_folder(tmp_path / "support")
    model = tmp_path / "model"
    assert main(["adapt", str(run), "--support", str(support), "--out", str(model),
                 "--mlflow", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mlflow_model"].startswith("models:/")

    logged = client.search_logged_models(experiment_ids=[experiment])
    assert [m.source_run_id for m in logged] == [training.info.run_id]
    assert client.get_run(training.info.run_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(uri)
    try:
        loaded = mlflow.pyfunc.load_model(summary["mlflow_model"])
    finally:
        mlflow.set_tracking_uri(None)
    images = sorted(str(p) for p in (support / "label_2").iterdir())
    frame = loaded.predict(images)
    import pandas as pd

    assert loaded.predict(pd.DataFrame({"input": images})).equals(frame)
    assert list(frame.columns) == ["label", "label_0", "label_1", "label_2"]
    assert main(["predict", str(model), *images, "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert frame["label"].tolist() == [d["label"] for d in direct]
    assert frame["label_2"].tolist() == pytest.approx(
        [d["probabilities"]["label_2"] for d in direct], abs=1e-6)
    artifacts = {f.path for f in client.list_artifacts(training.info.run_id)}
    assert not any(p.endswith((".pkl", ".pickle")) for p in artifacts)


def test_an_adapted_model_of_an_untracked_run_gets_its_own_mlflow_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from deploy_fixtures import image_run, support_folder
    from metafit.deploy.adapter import Adapter, load_support
    from metafit.deploy.errors import ModelDirError
    from metafit.deploy.mlflow_model import log_adapted_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    inputs, labels = load_support(support_folder(tmp_path / "s"), "image")
    model = Adapter.from_run(image_run()).adapt(inputs, labels).save(tmp_path / "m")
    uri = log_adapted_model(model, image_run())  # the shared run has no mlflow.json
    assert uri.startswith("models:/")
    client = client_for(f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    [run] = client.search_runs([client.get_experiment_by_name("metafit-adapted")
                                .experiment_id])
    assert run.info.run_name == "m"
    assert run.data.tags["metafit.model_dir"] == str(model.resolve())
    with pytest.raises(ModelDirError, match="manifest"):
        log_adapted_model(tmp_path / "s", None)  # not a model directory: refused first
    # a store MLflow cannot use: one line naming it, saying the model directory is kept
    with pytest.raises(ValueError, match=r"store bogus://x cannot be used .*the model "
                                         r"directory .* is written"):
        log_adapted_model(model, None, tracking_uri="bogus://x")
    assert os.environ.get("MLFLOW_TRACKING_URI") is None  # left as it was


def test_a_received_runs_mlflow_file_does_not_choose_where_the_model_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    import logging
    import shutil

    pytest.importorskip("mlflow")
    from deploy_fixtures import image_run, support_folder
    from metafit.deploy.adapter import Adapter, load_support
    from metafit.deploy.mlflow_model import log_adapted_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = Path(shutil.copytree(image_run(), tmp_path / "received" / "run"))
    elsewhere = f"sqlite:///{(tmp_path / 'attacker.db').as_posix()}"
    attacker = client_for(elsewhere)
    planted = attacker.create_run(attacker.create_experiment("bait"))
    (run / RUN_FILE).write_text(json.dumps({"tracking_uri": elsewhere,
                                             "run_id": planted.info.run_id}))
    inputs, labels = load_support(support_folder(tmp_path / "s"), "image")
    model = Adapter.from_run(run).adapt(inputs, labels).save(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="metafit.deploy.mlflow_model"):
        assert log_adapted_model(model, run).startswith("models:/")
    assert "names the store" in caplog.text and "logging to a new run here" in caplog.text
    assert attacker.search_logged_models(experiment_ids=["0", planted.info.experiment_id]) \
        == []  # nothing went to the store the file named
    own = client_for(f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    assert own.get_experiment_by_name("metafit-adapted") is not None
    (run / RUN_FILE).write_text("[" * 10_000 + "]" * 10_000)  # nested too deeply
    with caplog.at_level(logging.WARNING, logger="metafit.deploy.mlflow_model"):
        assert log_adapted_model(model, run).startswith("models:/")
    assert "nested too deeply" in caplog.text
    # Both went to the store beside the model, and the first left no global URI behind
    # (restoring it as the default once sent the second to the current directory).
    import os

    assert "MLFLOW_TRACKING_URI" not in os.environ
    experiment = own.get_experiment_by_name("metafit-adapted").experiment_id
    assert len(own.search_runs([experiment])) == 2
