"""MLflow tracking against a real local store (SQLite in tmp_path), read back with
MlflowClient: the recipe as parameters, every logged metric at its iteration, the run's
files as artifacts, the final status; a resumed run continues its MLflow run; without
mlflow a recipe asking for it fails before its run directory exists."""

from __future__ import annotations

import json
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
