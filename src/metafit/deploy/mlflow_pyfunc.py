"""The MLflow ``pyfunc`` flavour of an adapted model directory, as "models from code":
MLflow copies this file into the logged model and runs it when the model is loaded, so
nothing is pickled (see :func:`metafit.deploy.mlflow_model.log_adapted_model`).

    model = mlflow.pyfunc.load_model(uri)
    model.predict(["how do I top up my card?"])            # text models
    model.predict(["a.png", "b.png"])                       # image models: file paths

``predict`` returns a pandas DataFrame, one row per input: ``label`` (the most probable
class; with a reject setting, the unknown label for an input scoring below the threshold),
with a reject setting ``reject_score`` and ``rejected``, and one probability column per
class, in the model's label order. Loading needs
metafit installed beside MLflow.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

#: The artifact that holds the model directory.
ARTIFACT = "model_dir"


class AdaptedPyfunc(PythonModel):  # type: ignore[misc]
    """An :class:`~metafit.deploy.adapted.AdaptedModel` behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        from metafit.deploy.adapted import AdaptedModel

        self.model = AdaptedModel.load(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: list[str],
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``model_input``: texts or image paths (MLflow turns a one-column DataFrame
        into this list, checking the type hint)."""
        items = [str(v) for v in model_input]
        if self.model.kind == "image":
            from pathlib import Path

            inputs: list[Any] = [Path(i) for i in items]
        else:
            inputs = items
        rows = self.model.predict(inputs)
        flags = [] if self.model.reject is None else ["reject_score", "rejected"]
        return pd.DataFrame([{"label": r["label"], "reject_score": r.get("score"),
                              "rejected": r.get("rejected"), **r["probabilities"]}
                             for r in rows],
                            columns=["label", *flags, *self.model.label_names])


mlflow.models.set_model(AdaptedPyfunc())
