"""MLflow tracking: a run's recipe, metrics and files as an MLflow run.

:class:`MLflowLogger` is a :class:`~metafit.training.callbacks.Callback`; a recipe with
``mlflow: true`` gets one from the trainer (``mlflow_uri``, ``mlflow_experiment``), and
any caller may pass one in ``callbacks``. It needs the ``mlflow`` package (the ``track``
extra: ``pip install "metafit[track]"``), checked when the logger is built, so a recipe
asking for MLflow without it fails before its run directory is created.

Where it logs (the tracking URI), first that applies:

1. ``tracking_uri`` (the recipe's ``mlflow_uri``): any URI MLflow takes
   (``sqlite:///path/mlflow.db``, ``file:///path/mlruns``, ``http://server:5000``,
   ``databricks``);
2. MLflow's own setting, the ``MLFLOW_TRACKING_URI`` environment variable (read by
   MLflow, not by metafit);
3. a SQLite store beside the run directory, ``sqlite:///<parent of RUN>/mlflow.db``, so
   that the runs under one folder (``runs/``) share one store:
   ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``.

An experiment created in a local SQLite store keeps its artifacts beside the database
(``<its folder>/mlartifacts/``), not in the working directory.

What it logs:

* ``on_fit_start``: an MLflow run named after the recipe, in the experiment
  ``experiment`` (default: the recipe's name), with the resolved recipe as parameters
  (nested keys joined with ``.``, values as in ``config.yaml``'s JSON spelling, cut to
  :data:`MAX_PARAM_LENGTH` characters) and the tags ``metafit.run_dir`` and
  ``metafit.version``. The run's id is kept in ``RUN/mlflow.json`` (written atomically):
  training again into the same directory (a resume) continues that MLflow run, its
  status back to ``RUNNING``; recipe keys changed on resume (``iterations``, ...) cannot
  change an MLflow parameter and are listed in the tag ``metafit.resume_changes``;
* ``on_log``: every number of every metric record as the metric ``{split}/{key}``
  (``train/loss``, ``train/lr``, ``val/accuracy``, ``val/ci95``, ``train/seconds``) at
  step ``iteration``. A resumed run logs again the iterations after its checkpoint that
  the interrupted session had logged, so such a step can hold two points;
* ``on_fit_end``: the run directory's ``config.yaml``, ``metrics.jsonl`` and
  ``status.json`` as artifacts (with ``log_best=True`` also ``checkpoints/best.pt``, off
  by default: checkpoints can be large), then the MLflow status: ``FINISHED`` for
  ``complete`` and ``stopped_early``, ``KILLED`` for ``interrupted``, ``FAILED`` for
  ``failed``.

A tracking store that fails while the run trains (a server gone) is logged as a warning
and does not stop the training; one that fails at the start does.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from metafit._version import __version__
from metafit.config.schema import Recipe
from metafit.io import atomic_write_text, parse_json, read_bounded
from metafit.training.callbacks import Callback, TrainerView

__all__ = ["MLflowLogger", "MLFLOW_STATUS", "MAX_PARAM_LENGTH", "RUN_FILE", "read_run_file",
           "default_uri", "experiment_id", "flat_params", "import_mlflow", "tracking_callbacks",
           "tracking_client"]

log = logging.getLogger(__name__)

#: metafit's final status -> MLflow's run status.
MLFLOW_STATUS = {"complete": "FINISHED", "stopped_early": "FINISHED",
                 "interrupted": "KILLED", "failed": "FAILED"}

#: The longest parameter value every MLflow store takes (newer ones take 6000).
MAX_PARAM_LENGTH = 500

#: The file in the run directory that names its MLflow run.
RUN_FILE = "mlflow.json"
#: Largest ``RUN/mlflow.json`` read (metafit writes about 150 bytes).
MAX_RUN_FILE_BYTES = 2**16


def read_run_file(path: Path) -> dict[str, Any]:
    """The JSON object of a run's ``mlflow.json`` (``path``), read bounded: the run
    directory may come from someone else.

    Raises:
        ValueError: over :data:`MAX_RUN_FILE_BYTES`, not a regular file, invalid JSON.
        OSError: it cannot be read.
        TypeError: not a JSON object.
    """
    saved = parse_json(read_bounded(path, MAX_RUN_FILE_BYTES), path)
    if not isinstance(saved, dict):
        raise TypeError("not a JSON object")
    return saved

#: The run directory's files logged as artifacts at the end of the run.
ARTIFACTS = ("config.yaml", "metrics.jsonl", "status.json")

_BATCH = 100  # MLflow's limit of parameters (and metrics: 1000) per log_batch call


def import_mlflow() -> Any:
    """The ``mlflow`` module.

    Raises:
        ValueError: mlflow is not installed (names the ``track`` extra).
    """
    try:
        import mlflow
    except ImportError as e:
        raise ValueError("mlflow=true needs the mlflow package: pip install "
                         "'metafit[track]' (or pip install mlflow)") from e
    return mlflow


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``values`` flattened (``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``): strings as they are,
    everything else in JSON (``null``, ``true``, ``[1, 2]``), each cut to
    :data:`MAX_PARAM_LENGTH` characters (the last three then ``...``). An empty mapping
    is ``{}``."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, name + "."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_PARAM_LENGTH:
            text = text[:MAX_PARAM_LENGTH - 3] + "..."
        flat[name] = text
    return flat


def default_uri(run_path: Path) -> str:
    """``sqlite:///<parent of run_path>/mlflow.db``, the path absolute."""
    return f"sqlite:///{(run_path.resolve().parent / 'mlflow.db').as_posix()}"


def tracking_client(tracking_uri: str | None, beside: Path) -> tuple[Any, str]:
    """An ``MlflowClient`` of the store to log to and its URI as MLflow resolved it:
    ``tracking_uri``, else MLflow's ``MLFLOW_TRACKING_URI``, else :func:`default_uri`
    beside ``beside`` (a run or model directory)."""
    from mlflow import MlflowClient
    from mlflow.environment_variables import MLFLOW_TRACKING_URI

    uri = tracking_uri
    if uri is None and not MLFLOW_TRACKING_URI.is_set():
        uri = default_uri(beside)
    client = MlflowClient(tracking_uri=uri)
    return client, client.tracking_uri


def sqlite_artifacts(uri: str) -> str | None:
    """For a local SQLite store (``sqlite:///PATH``), the ``mlartifacts`` folder beside
    its file as a ``file://`` URI; else None (the store's own default)."""
    prefix = "sqlite:///"
    db = uri[len(prefix):].split("?")[0] if uri.startswith(prefix) else ""
    if db in ("", ":memory:"):
        return None
    return (Path(db).parent / "mlartifacts").resolve().as_uri()


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name`` in ``client``'s store (at ``uri``), created if needed
    (artifacts of a local SQLite store's beside its file)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=sqlite_artifacts(uri)))
    except MlflowException:
        found = client.get_experiment_by_name(name)  # created meanwhile
        if found is None:
            raise
        return str(found.experiment_id)


class MLflowLogger(Callback):
    """Logs the run to MLflow (module docstring): ``tracking_uri`` (default: MLflow's
    ``MLFLOW_TRACKING_URI``, else ``sqlite:///<parent of RUN>/mlflow.db``), ``experiment``
    (default: the recipe's name), ``log_best``: also log ``checkpoints/best.pt``.

    Raises:
        ValueError: (when built) mlflow is not installed.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 log_best: bool = False) -> None:
        import_mlflow()
        self.tracking_uri, self.experiment, self.log_best = tracking_uri, experiment, log_best
        self.client: Any = None
        self.run_id: str | None = None
        self.run_path: Path | None = None
        self._warned = False

    # -- hooks ------------------------------------------------------------------------
    def on_fit_start(self, trainer: TrainerView) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._start(trainer)
        except MlflowException as e:
            detail = str(e).strip().split(". ")[0][:300]
            raise ValueError(f"MLflow tracking store {self.tracking_uri or 'default'} "
                             f"cannot be used ({detail}); set mlflow_uri to another store "
                             "(sqlite:///PATH/mlflow.db, http://HOST) or mlflow: false") \
                from None

    def _start(self, trainer: TrainerView) -> None:
        self.run_path = trainer.run.path
        self.client, uri = tracking_client(self.tracking_uri, self.run_path)
        recipe = trainer.recipe
        params = flat_params(recipe.applicable_dump(mode="json"))
        saved = self._saved_run(uri)
        if saved is not None:
            self.run_id = saved
            self.client.update_run(saved, status="RUNNING")
            self._log_changed_params(params)
            log.info("MLflow: continuing run %s in %s", saved, uri)
        else:
            experiment = experiment_id(self.client, self.experiment or recipe.name, uri)
            run = self.client.create_run(experiment, run_name=recipe.name, tags={
                "metafit.run_dir": str(self.run_path.resolve()),
                "metafit.version": __version__})
            self.run_id = run.info.run_id
            self._log_params(params)
            log.info("MLflow: run %s in %s", self.run_id, uri)
        atomic_write_text(self.run_path / RUN_FILE, json.dumps(
            {"tracking_uri": uri, "run_id": self.run_id}, indent=1))

    def on_log(self, record: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        split, step = record["split"], int(record["iteration"])
        now = int(time.time() * 1000)
        metrics = [Metric(f"{split}/{key}", float(value), now, step)
                   for key, value in record.items()
                   if key not in ("iteration", "split") and isinstance(value, (int, float))
                   and not isinstance(value, bool)]
        if metrics:
            self._guarded("log metrics", lambda: self.client.log_batch(
                self.run_id, metrics=metrics, synchronous=True))

    def on_fit_end(self, trainer: TrainerView, status: str) -> None:
        if self.run_id is None:
            return
        run_id, run = self.run_id, trainer.run
        files = [run.path / name for name in ARTIFACTS]
        for path in files:
            if path.is_file():
                self._guarded(f"log {path.name}",
                              lambda p=path: self.client.log_artifact(run_id, str(p)))
        if self.log_best and run.checkpoint("best").is_file():
            self._guarded("log best.pt", lambda: self.client.log_artifact(
                run_id, str(run.checkpoint("best")), artifact_path="checkpoints"))
        self._guarded("set the status", lambda: self.client.set_terminated(
            run_id, status=MLFLOW_STATUS.get(status, "FAILED")))
        self.run_id = None

    # -- helpers ----------------------------------------------------------------------
    def _saved_run(self, uri: str) -> str | None:
        """The MLflow run of ``RUN/mlflow.json`` when it is in the store at ``uri``."""
        from mlflow.exceptions import MlflowException

        assert self.run_path is not None
        path = self.run_path / RUN_FILE
        if not path.is_file():
            return None
        try:
            saved = read_run_file(path)
            run_id = str(saved["run_id"])
        except (ValueError, OSError, KeyError, TypeError) as e:
            log.warning("MLflow: %s is unreadable (%s); starting a new run", path, e)
            return None
        if saved.get("tracking_uri") != uri:
            log.warning("MLflow: %s names a run in %s, not in %s; starting a new run",
                        path, saved.get("tracking_uri"), uri)
            return None
        try:
            self.client.get_run(run_id)
        except MlflowException:
            log.warning("MLflow: run %s of %s is not in %s; starting a new run",
                        run_id, path, uri)
            return None
        return run_id

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH], synchronous=True)

    def _log_changed_params(self, params: dict[str, str]) -> None:
        """On resume: log the keys the run has no parameter for; list the changed ones
        in the tag ``metafit.resume_changes`` (MLflow parameters cannot change)."""
        logged = self.client.get_run(self.run_id).data.params
        self._log_params({k: v for k, v in params.items() if k not in logged})
        changed = {k: [logged[k], v] for k, v in params.items()
                   if k in logged and logged[k] != v}
        if changed:
            self.client.set_tag(self.run_id, "metafit.resume_changes",
                                json.dumps(changed)[:MAX_PARAM_LENGTH])

    def _guarded(self, what: str, call: Any) -> None:
        """``call()``; a failure is a warning (the first one with its traceback)."""
        try:
            call()
        except Exception as e:  # a tracking store's failure must not end the training
            log.warning("MLflow: could not %s (%s)", what, e, exc_info=not self._warned)
            self._warned = True


def tracking_callbacks(recipe: Recipe) -> list[Callback]:
    """The experiment trackers ``recipe`` asks for: an
    :class:`~metafit.training.mlflow_logger.MLflowLogger` with ``mlflow: true`` (its
    ``mlflow_uri`` and ``mlflow_experiment``), for any algorithm (one that is not
    meta-trained still has parameters, a validation and files to log).

    Raises:
        ValueError: ``mlflow: true`` and mlflow is not installed (raised while the
            trainer is built, before the run directory is created).
    """
    if not recipe.mlflow:
        return []
    return [MLflowLogger(recipe.mlflow_uri, recipe.mlflow_experiment)]
