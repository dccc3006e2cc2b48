"""Deployment: adapt a meta-trained run to a user's labelled examples, predict, save and
load adapted model directories (atomic, checksummed), compress them (int8, pruning,
distillation) and export them to ONNX with a parity check. See docs/deploy.md.

Submodules: :mod:`.adapter` (:class:`Adapter`), :mod:`.adapted` (:class:`AdaptedModel`),
:mod:`.preprocess`, :mod:`.materialise`, :mod:`.modeldir`, :mod:`.compress`,
:mod:`.distill` (a smaller student taught on unlabelled inputs),
:mod:`.onnx_export`, :mod:`.episodes` (accuracy of compressed models on a run's test
episodes), :mod:`.calibrate` (temperature and reject threshold fitted on held-out support
folds), :mod:`.reject` ("none of these": the reject setting), :mod:`.commands` (the CLI
verbs).
"""

from metafit.deploy.adapted import AdaptedModel, Prediction
from metafit.deploy.adapter import Adapter, adapt_run, check_labels
from metafit.deploy.errors import ExportError, InputError, ModelDirError, SupportError
from metafit.deploy.preprocess import load_support

__all__ = ["AdaptedModel", "Adapter", "ExportError", "InputError", "ModelDirError",
           "Prediction", "SupportError", "adapt_run", "check_labels", "load_support"]
