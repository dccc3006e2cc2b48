"""An adapted model directory logged to MLflow as a model (``metafit adapt --mlflow``).

The directory goes in as an artifact of a ``pyfunc`` model built from code
(:mod:`metafit.deploy.mlflow_pyfunc`): MLflow stores the code file, not a pickle, and
``mlflow.pyfunc.load_model(uri).predict(inputs)`` loads the directory with
:meth:`AdaptedModel.load <metafit.deploy.adapted.AdaptedModel.load>` (its manifest and
checksums checked as for any model directory).

Which MLflow run it joins, first that applies: the training run's own, named in
``RUN/mlflow.json`` (the run was trained with ``mlflow: true``), so that the adapted model
sits beside the metrics it came from, when that run is in the store you would log to
anyway (``tracking_uri``, ``MLFLOW_TRACKING_URI`` or the default beside the run: a
received run directory never chooses where your model and support set are uploaded);
else a new run named after the model directory in
the experiment named after the recipe, in ``tracking_uri``, else MLflow's
``MLFLOW_TRACKING_URI``, else ``sqlite:///<parent of MODEL>/mlflow.db``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from metafit._version import __version__
from metafit.training.mlflow_logger import (
    RUN_FILE,
    default_uri,
    experiment_id,
    import_mlflow,
    read_run_file,
    tracking_client,
)

__all__ = ["log_adapted_model"]

log = logging.getLogger(__name__)

CODE = Path(__file__).with_name("mlflow_pyfunc.py")


def _target(model_dir: Path, run_dir: Path | None, tracking_uri: str | None,
            experiment: str) -> tuple[str, str]:
    """``(tracking URI, run id)`` of the MLflow run the model joins (module docstring)."""
    saved = run_dir / RUN_FILE if run_dir is not None else None
    if saved is not None and saved.is_file():
        try:
            named = read_run_file(saved)
            uri, run_id = str(named["tracking_uri"]), str(named["run_id"])
        except (ValueError, OSError, KeyError, TypeError) as e:
            log.warning("MLflow: %s is unreadable (%s); logging to a new run", saved, e)
        else:
            # A run directory may come from someone else: join the store it names only
            # where the user would log anyway (their URI, MLFLOW_TRACKING_URI, or the
            # default beside the run), never a store the file alone chooses.
            own = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(run_dir)
            if uri == own:
                return uri, run_id
            log.warning("MLflow: %s names the store %s, not this one (%s); logging to a new "
                        "run here (pass that URI yourself to join its run)", saved, uri, own)
    client, uri = tracking_client(tracking_uri, model_dir)
    run = client.create_run(experiment_id(client, experiment, uri), run_name=model_dir.name,
                            tags={"metafit.model_dir": str(model_dir.resolve()),
                                  "metafit.version": __version__})
    return uri, run.info.run_id


def log_adapted_model(model_dir: str | Path, run_dir: str | Path | None = None,
                      tracking_uri: str | None = None, experiment: str = "metafit-adapted",
                      name: str = "adapted_model") -> str:
    """Log the model directory ``model_dir`` as the MLflow pyfunc model ``name`` (module
    docstring: which run); returns the model's URI for ``mlflow.pyfunc.load_model``.

    Raises:
        ValueError: mlflow is not installed (names the ``track`` extra), or the tracking
            store cannot be used.
        ModelDirError: ``model_dir`` is not a valid model directory (checked first).
    """
    mlflow = import_mlflow()
    from metafit.deploy.adapted import AdaptedModel

    model_dir = Path(model_dir)
    AdaptedModel.load(model_dir)  # a broken directory fails here, before MLflow
    from mlflow.exceptions import MlflowException

    # MLflow's set_tracking_uri also sets MLFLOW_TRACKING_URI: restore "not set" as unset
    # (None), not as the default URI, or a later call would log to the current directory.
    previous = os.environ.get("MLFLOW_TRACKING_URI") or None
    uri = tracking_uri or previous or "the default store"
    try:
        uri, run_id = _target(model_dir, None if run_dir is None else Path(run_dir),
                              tracking_uri, experiment)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=name, python_model=str(CODE),
                artifacts={"model_dir": str(model_dir)},
                pip_requirements=[f"metafit=={__version__}", f"mlflow=={mlflow.__version__}"])
    except MlflowException as e:  # a store MLflow cannot use: one line, not its traceback
        detail = str(e).strip().split(". ")[0].splitlines()[0][:300]
        raise ValueError(f"MLflow tracking store {uri} cannot be used ({detail}); the model "
                         f"directory {model_dir} is written: log it with another --mlflow-uri "
                         "(sqlite:///PATH/mlflow.db, http://HOST)") from None
    finally:
        mlflow.set_tracking_uri(previous)
    log.info("MLflow: logged %s as model %s (run %s in %s)", model_dir, info.model_uri,
             run_id, uri)
    return str(info.model_uri)
