"""Knowledge distillation of an adapted model into a smaller student (Hinton, Vinyals and
Dean 2015, "Distilling the Knowledge in a Neural Network"), on unlabelled inputs.

The adapted model (the *teacher*) labels every unlabelled input with its logits ``z_t``;
the *student* is trained to match them: the loss of a batch is

    ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``  (+ ``w * CE(z_s(support), y)``)

with the distillation temperature ``T`` (the ``T^2`` keeps the gradients' scale
independent of ``T``, sec. 2 of the paper) and, with ``support_weight w > 0``, the cross
entropy on the teacher's own labelled support set. AdamW, the learning rate warmed up
linearly over the first 10% of the steps and decayed linearly to zero, gradients clipped
at norm 1, batches drawn without replacement (seeded).

Students (:func:`parse_student`):

* text, ``layers:N``: the first N transformer layers of the teacher's own encoder (its
  embeddings and those layers' weights copied, the head too), ``layers:0,2,4``: the
  layers named; the tokenizer is the teacher's;
* text, a path: another local Hugging Face encoder (its pretrained weights; its own
  tokenizer, written to the student's ``encoder/``; the teacher's stored support set is
  decoded to text and tokenised again for it);
* images, ``NAME[:HIDDEN[:DEPTH]]`` (``conv4:32``, ``mlp:256:2``): that backbone, its
  parameters copied from the teacher's where name and shape agree (a narrower conv4
  shares none and trains from scratch; a shallower conv4 of the same width starts from
  the teacher's lower blocks), the rest initialised with the seed. BatchNorm layers train
  on batch statistics and are then frozen on the statistics of up to 1024 unlabelled
  inputs (``batch_norm: support`` in ``model.json``, like an adapted model's).

The student is an ordinary :class:`~metafit.deploy.adapted.AdaptedModel` (labels,
preprocessing, support set carried over; ``compression.distill`` says how it was made).
A share of the unlabelled inputs (``held_out``, default 10%) is not trained on: the
student's agreement with the teacher there is reported before and after training, and
what the teacher had fitted is *refitted* for the student on those inputs:

* a calibration temperature (teacher fitted with ``--calibrate``): the student's
  temperature minimises the cross entropy from the teacher's calibrated probabilities
  (:func:`~metafit.evaluation.calibration.fit_temperature` with soft targets);
* a reject threshold ("none of these"): the same score, its threshold set so that the
  student rejects the same share of the held-out inputs as the teacher does (the teacher's
  threshold was fitted on held-out support folds; a student has no folds to refit on).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.deploy.adapted import ENCODER, AdaptedModel
from metafit.deploy.errors import InputError
from metafit.deploy.preprocess import ImagePreprocessor, TextPreprocessor
from metafit.deploy.reject import RejectSetting
from metafit.models.base import FewShotModel

__all__ = ["DistillSettings", "Student", "parse_student", "read_unlabelled", "distill",
           "kd_loss", "preprocess_inputs", "MIN_UNLABELLED", "MAX_INPUT_BYTES", "IMAGE_STUDENTS"]

log = logging.getLogger(__name__)

#: Fewest unlabelled inputs accepted.
MIN_UNLABELLED = 10
#: Largest memory the preprocessed unlabelled inputs may take (checked before any is read).
MAX_INPUT_BYTES = 2 * 2**30
#: Image backbones a student may be.
IMAGE_STUDENTS = ("conv4", "mlp", "resnet12", "resnet18")
#: Bounds of an image student's NAME:HIDDEN:DEPTH, and of its parameter count (checked
#: on the meta device before it is built).
MAX_STUDENT_WIDTH = 4096
MAX_STUDENT_DEPTH = 64
MAX_STUDENT_VALUES = 200_000_000
#: Unlabelled inputs whose statistics a student's BatchNorm layers are frozen on.
BATCH_NORM_INPUTS = 1024


@dataclass(frozen=True)
class DistillSettings:
    """How a student is trained.

    Args:
        steps: optimizer steps (0: the student as initialised, for comparison).
        batch_size: unlabelled inputs per step.
        lr: AdamW's peak learning rate (None: 1e-4 for text, 1e-3 for images).
        temperature: the distillation temperature ``T`` (Hinton et al. 2015).
        support_weight: weight of the cross entropy on the support set's labels (0: none).
        held_out: share of the unlabelled inputs kept out of training for the reported
            agreement and the refits.
        seed: seeds the student's fresh weights and the batches.
        max_inputs: most unlabelled inputs accepted (more is an error, not a sample).
        log_every: steps between progress log lines.
    """

    steps: int = 300
    batch_size: int = 32
    lr: float | None = None
    temperature: float = 2.0
    support_weight: float = 0.0
    held_out: float = 0.1
    seed: int = 0
    max_inputs: int = 50_000
    log_every: int = 50

    def __post_init__(self) -> None:
        checks = [(self.steps >= 0, "steps must be >= 0"),
                  (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.lr is None or (math.isfinite(self.lr) and self.lr > 0),
                   "lr must be a positive number"),
                  (math.isfinite(self.temperature) and self.temperature > 0,
                   "the distillation temperature must be > 0"),
                  (math.isfinite(self.support_weight) and self.support_weight >= 0,
                   "support_weight must be >= 0"),
                  (0.0 <= self.held_out < 1.0, "held_out must be in [0, 1)"),
                  (self.max_inputs >= MIN_UNLABELLED,
                   f"max_inputs must be >= {MIN_UNLABELLED}"),
                  (self.log_every >= 1, "log_every must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"distillation: {message}")

    def learning_rate(self, kind: str) -> float:
        """:attr:`lr`, or the default for a ``"text"`` or ``"image"`` student."""
        return self.lr if self.lr is not None else (1e-4 if kind == "text" else 1e-3)


@dataclass(frozen=True)
class Student:
    """A parsed student spec (:func:`parse_student`).

    Attributes:
        spec: as given.
        kind: ``"layers"`` (fewer layers of the teacher's encoder), ``"encoder"`` (another
            local encoder) or ``"image"`` (another image backbone).
        layers: ``layers``: the teacher's transformer layers kept, in order.
        path: ``encoder``: the encoder's directory.
        model, hidden, depth: ``image``: the backbone (hidden and depth None: the
            teacher's recipe's).
    """

    spec: str
    kind: Literal["layers", "encoder", "image"]
    layers: tuple[int, ...] = ()
    path: Path | None = None
    model: str | None = None
    hidden: int | None = None
    depth: int | None = None


def _teacher_layers(teacher: AdaptedModel) -> nn.ModuleList:
    from metafit.models.text import transformer_layers

    return transformer_layers(cast(Any, teacher.module.body).encoder)


def _positive(text: str, what: str, most: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise ValueError(f"student {what} must be a positive integer, at most {most}, got "
                         f"{text!r}")
    return value


def parse_student(spec: str, teacher: AdaptedModel) -> Student:
    """The student ``spec`` names for ``teacher`` (module docstring): text ``layers:N``,
    ``layers:I,J,...`` or an encoder directory; images ``NAME[:HIDDEN[:DEPTH]]``.

    Raises:
        ValueError: a spec of the other kind, a layer count or index out of range, no
            fewer layers than the teacher, an unknown backbone, a missing encoder
            directory (the message says what is accepted).
    """
    spec = spec.strip()
    if teacher.kind == "text":
        if spec.startswith("layers:"):
            total = len(_teacher_layers(teacher))
            body = spec[len("layers:"):]
            if "," in body:
                try:
                    keep = tuple(int(i) for i in body.split(","))
                except ValueError:
                    raise ValueError(f"student {spec!r}: layer indices must be integers, "
                                     "e.g. layers:0,2,4") from None
                if sorted(set(keep)) != list(keep) or not all(0 <= i < total for i in keep):
                    raise ValueError(f"student {spec!r}: layer indices must be distinct, "
                                     f"increasing and in 0..{total - 1}")
            else:
                keep = tuple(range(_positive(body, "layer count", MAX_STUDENT_DEPTH)))
            if len(keep) >= total:
                raise ValueError(f"student {spec!r}: the teacher's encoder has {total} "
                                 f"layers; keep fewer (1..{total - 1})")
            return Student(spec, "layers", layers=keep)
        from metafit.models.tokenizer import check_model_dir

        if spec.startswith(IMAGE_STUDENTS):
            raise ValueError(f"student {spec!r} is an image backbone, but the teacher is a "
                             "text model: give layers:N or a local encoder directory")
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ValueError(f"student {spec!r}: a text student is layers:N (the first N "
                             "layers of the teacher's encoder), layers:I,J,... or a local "
                             "Hugging Face encoder directory, and no directory "
                             f"{path} exists")
        return Student(spec, "encoder", path=check_model_dir(path))
    name, *rest = spec.split(":")
    if spec.startswith("layers:") or name not in IMAGE_STUDENTS:
        raise ValueError(f"student {spec!r}: an image student is a backbone "
                         f"NAME[:HIDDEN[:DEPTH]] with NAME one of {', '.join(IMAGE_STUDENTS)} "
                         "(e.g. conv4:32, mlp:256:2)")
    if len(rest) > 2:
        raise ValueError(f"student {spec!r}: NAME[:HIDDEN[:DEPTH]] has at most two numbers")
    hidden = _positive(rest[0], "width (HIDDEN)", MAX_STUDENT_WIDTH) if rest else None
    depth = _positive(rest[1], "depth (DEPTH)", MAX_STUDENT_DEPTH) if len(rest) > 1 else None
    return Student(spec, "image", model=name, hidden=hidden, depth=depth)


def _image_files(root: Path) -> list[Path]:
    """The image files under ``root`` (any depth; hidden names skipped), sorted."""
    from metafit.data.image_folder import IMAGE_EXTENSIONS  # lower case, with the dot

    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def read_unlabelled(path: str | Path, kind: str, text_column: str = "text",
                    max_inputs: int = DistillSettings.max_inputs) -> list[Any]:
    """The unlabelled inputs at ``path``: for ``kind="text"`` the ``text_column`` of a
    table (CSV, JSON Lines, Parquet or a ``datasets`` directory, read by
    :mod:`metafit.data.tables`; blank cells skipped), for ``"image"`` the image files of
    a folder (any depth).

    Raises:
        InputError: no such file or folder, an unknown table format, a missing column, a
            cell that is not a string, no image files, fewer than :data:`MIN_UNLABELLED`
            or more than ``max_inputs`` inputs (the message names the file).
    """
    from metafit.data.errors import DatasetError
    from metafit.data.tables import is_table, read_table

    path = Path(path)
    if not path.exists():
        raise InputError(f"unlabelled inputs {path}: no such file or folder")
    if kind == "text":
        if path.is_dir() and not is_table(path):
            raise InputError(f"unlabelled inputs {path} is a folder; text inputs are a table "
                             f"(.csv, .jsonl, .parquet or a datasets directory) with a "
                             f"{text_column!r} column")
        try:
            rows = read_table(path, text_column, text_column)
        except DatasetError as e:
            raise InputError(f"unlabelled inputs: {e}") from e
        bad = [place for cell, place in zip(rows.inputs, rows.places, strict=True)
               if not isinstance(cell, str)]
        if bad:
            raise InputError(f"unlabelled inputs {path}: {text_column!r} is not a string at "
                             f"{rows.where(bad)}")
        inputs: list[Any] = [t.strip() for t in rows.inputs if t.strip()]
        if len(inputs) < len(rows.inputs):
            log.info("unlabelled inputs %s: skipped %d blank texts", path,
                     len(rows.inputs) - len(inputs))
    elif kind == "image":
        if not path.is_dir():
            raise InputError(f"unlabelled inputs {path}: image inputs are a folder of image "
                             "files (any depth)")
        inputs = list(_image_files(path))
    else:
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    what = "texts" if kind == "text" else "image files"
    if len(inputs) < MIN_UNLABELLED:
        raise InputError(f"unlabelled inputs {path}: {len(inputs)} {what}; distillation "
                         f"needs at least {MIN_UNLABELLED}")
    if len(inputs) > max_inputs:
        raise InputError(f"unlabelled inputs {path}: {len(inputs)} {what}, more than the "
                         f"limit {max_inputs}: pass fewer, or raise the limit "
                         "(--max-unlabelled)")
    return inputs


# -- building the student ------------------------------------------------------------
def _stack_name(module: nn.Module, stack: nn.Module) -> str:
    """The name of the submodule ``stack`` inside ``module``."""
    for name, sub in module.named_modules():
        if sub is stack:
            return name
    raise ValueError("the transformer layers are not part of the model")


def _layers_state(teacher: AdaptedModel, keep: Sequence[int]) -> dict[str, Tensor]:
    """The teacher's body state with only the transformer layers ``keep``, renumbered
    ``0..len(keep)-1``."""
    prefix = _stack_name(teacher.module, _teacher_layers(teacher)) + "."
    state: dict[str, Tensor] = {}
    for key, value in teacher.module.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in keep:
                state[f"{prefix}{keep.index(int(index))}.{rest}"] = value.clone()
        elif key.startswith("body."):
            state[key] = value.clone()
    return state


def _head_state(teacher: AdaptedModel, kind: str, features: int) -> dict[str, Tensor]:
    """The student head's starting weights taken from the teacher's (empty: none fit):
    a linear or logistic head of the same width is copied; ProtoNet's squared-distance
    head ``-s ||f - p_c||^2`` becomes the linear head ``2 s p_c . f - s ||p_c||^2``,
    which gives the same probabilities (the ``-s ||f||^2`` it drops is the same for every
    class)."""
    arch = teacher.arch
    if int(arch["features"]) != features:
        return {}
    head = teacher.module.head
    if arch["head"] == kind:
        return {k: v.clone() for k, v in head.state_dict().items()}
    if (arch["head"] == "prototypes" and kind == "linear"
            and arch.get("distance", "sqeuclidean") == "sqeuclidean"):
        p, s = cast(Tensor, head.prototypes), float(arch.get("scale", 1.0))  # [N, F]
        return {"weight": 2 * s * p.clone(), "bias": -s * (p * p).sum(1)}
    return {}


def _text_student(teacher: AdaptedModel, student: Student
                  ) -> tuple[FewShotModel, dict[str, Any], Any, TextPreprocessor,
                             dict[str, bytes], dict[str, Tensor]]:
    """Module, architecture, recipe, preprocessor, ``encoder/`` files and the body's
    starting state of a text student."""
    from metafit.deploy.adapter import encoder_assets
    from metafit.deploy.materialise import build_module
    from metafit.models.text import load_encoder
    from metafit.models.tokenizer import pad_id

    body = cast(Any, teacher.module.body)
    kind = "logistic" if teacher.arch["head"] == "logistic" else "linear"
    prep = cast(TextPreprocessor, teacher.preprocessor)
    if student.kind == "layers":
        config = copy.deepcopy(body.encoder.config)
        config.num_hidden_layers = len(student.layers)
        recipe = teacher.recipe
        assets = {**teacher.assets,
                  ENCODER + "config.json": config.to_json_string().encode()}
        state = _layers_state(teacher, student.layers)
    else:
        root = cast(Path, student.path)
        encoder, pad = load_encoder(root, teacher.recipe.text_dropout)
        config = encoder.config
        recipe = teacher.recipe.model_copy(update={"text_model": str(root)})
        assets = encoder_assets(config, root)
        state = {f"body.encoder.{k}": v for k, v in encoder.state_dict().items()}
        prep = TextPreprocessor(root, teacher.recipe.max_length, pad_id(root))
        prep.load()
    features = int(config.hidden_size)
    arch = {"head": kind, "ways": len(teacher.label_names), "features": features,
            "batch_norm": "none"}
    if student.kind == "layers" and "vocabulary" in teacher.arch:  # the teacher's trimmed table
        arch["vocabulary"] = teacher.arch["vocabulary"]
    module = build_module(arch, recipe, config, prep.pad_id)
    return module, arch, recipe, prep, assets, state


def _image_student(teacher: AdaptedModel, student: Student
                   ) -> tuple[FewShotModel, dict[str, Any], Any, dict[str, Tensor]]:
    """Module (freshly initialised: seed first), architecture, recipe and the parameters
    shared with the teacher (same name and shape) of an image student."""
    from metafit.algorithms.from_recipe import build_model
    from metafit.deploy.materialise import build_module

    update: dict[str, Any] = {"model": student.model}
    if student.hidden is not None:
        update["hidden"] = student.hidden
    if student.depth is not None:
        update["depth"] = student.depth
    recipe = teacher.recipe.model_copy(update=update)
    with torch.device("meta"):  # its size first: nothing is allocated
        probe = cast(FewShotModel, build_model(recipe.model_copy(update={"ways": 1})))
    values = sum(p.numel() for p in probe.parameters())
    if values > MAX_STUDENT_VALUES:
        raise ValueError(f"student {student.spec!r} has {values:,} parameters, over the "
                         f"limit of {MAX_STUDENT_VALUES:,} (a student is for a smaller model)")
    features = probe.feature_dim
    kind = "logistic" if teacher.arch["head"] == "logistic" else "linear"
    arch = {"head": kind, "ways": len(teacher.label_names), "features": int(features),
            "batch_norm": "batch"}
    module = build_module(arch, recipe)
    mine = dict(module.named_parameters())
    shared = {n: p.detach().clone() for n, p in teacher.module.named_parameters()
              if n.startswith("body.") and n in mine and mine[n].shape == p.shape}
    return module, arch, recipe, shared


def _initial(teacher: AdaptedModel, student: Student, seed: int
             ) -> tuple[AdaptedModel, dict[str, Any]]:
    """The untrained student and what its initialisation copied."""
    torch.manual_seed(seed)
    support = teacher.support
    assets = teacher.assets
    if student.kind == "image":
        module, arch, recipe, state = _image_student(teacher, student)
        prep: Any = teacher.preprocessor
    else:
        module, arch, recipe, prep, assets, state = _text_student(teacher, student)
        if student.kind == "encoder" and support is not None:
            texts = cast(TextPreprocessor, teacher.preprocessor).load().batch_decode(
                support[0].tolist(), skip_special_tokens=True)  # the teacher's ids as text
            support = (prep([t if t.strip() else "." for t in texts]), support[1])
    head = _head_state(teacher, arch["head"], int(arch["features"]))
    module.body.load_state_dict({k[len("body."):]: v for k, v in state.items()},
                                strict=student.kind != "image")
    if head:
        module.head.load_state_dict(head)
    init = {"copied_from_teacher": len(state), "head_from_teacher": bool(head)}
    info = {k: v for k, v in teacher.info.items() if k not in ("temperature", "calibration")}
    model = AdaptedModel(module, teacher.label_names, recipe, arch, prep, info, assets,
                         support, {"quantize": None, "prune": None}, None)
    return model, init


# -- training --------------------------------------------------------------------------
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, the mean over the batch, of
    logits ``[B, N]`` each (Hinton et al. 2015, sec. 2)."""
    t = temperature
    return t * t * F.kl_div(F.log_softmax(student_logits / t, -1),
                            F.log_softmax(teacher_logits / t, -1), log_target=True,
                            reduction="batchmean")


def preprocess_inputs(model: AdaptedModel, inputs: Sequence[Any], chunk: int = 1024
                      ) -> Tensor:
    """``inputs`` as ``model``'s tensors ``[M, *x]``, in chunks (an error names the input
    by its position in ``inputs``)."""
    parts = []
    for start in range(0, len(inputs), chunk):
        try:
            parts.append(model.preprocess(inputs[start:start + chunk]))
        except InputError as e:
            raise InputError(f"unlabelled inputs from {start} on: {e}") from e
    return torch.cat(parts)


def _check_memory(teacher: AdaptedModel, student: AdaptedModel, count: int) -> None:
    """Refuse inputs whose preprocessed tensors (teacher's and student's) would take more
    than :data:`MAX_INPUT_BYTES`, before any is preprocessed."""
    def row_bytes(prep: Any) -> int:
        if isinstance(prep, ImagePreprocessor):
            return 4 * prep.channels * prep.image_size ** 2
        return 8 * int(prep.max_length)

    needed = count * (row_bytes(teacher.preprocessor) + (
        0 if student.preprocessor is teacher.preprocessor else row_bytes(student.preprocessor)))
    if needed > MAX_INPUT_BYTES:
        raise InputError(f"{count} unlabelled inputs would take {needed / 2**30:.1f} GiB "
                         f"preprocessed, over the {MAX_INPUT_BYTES / 2**30:.0f} GiB limit: "
                         "pass fewer")


def _agreement(teacher_logits: Tensor, student_logits: Tensor, temperature: float
               ) -> dict[str, float]:
    """Share of equal predictions and the mean KL at the distillation temperature."""
    if len(teacher_logits) == 0:
        return {"agreement": float("nan"), "kl": float("nan")}
    same = (teacher_logits.argmax(-1) == student_logits.argmax(-1)).float().mean()
    return {"agreement": round(float(same), 6),
            "kl": round(float(kd_loss(student_logits, teacher_logits, temperature))
                        / temperature ** 2, 6)}


def _schedule(step: int, steps: int) -> float:
    """Linear warm-up over the first 10% of the steps, then linear decay to 0."""
    warm = max(1, steps // 10)
    return (step + 1) / warm if step < warm else max(0.0, (steps - step) / (steps - warm))


def _train(model: AdaptedModel, x: Tensor, targets: Tensor, settings: DistillSettings,
           lr: float, progress: Callable[[int, float], None] | None) -> list[float]:
    """Train ``model.module`` in place to the teacher's logits ``targets [M, N]`` of its
    inputs ``x [M, *x]``; the loss of every step."""
    module = model.module
    module.train()
    module.requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, settings.steps))
    gen = torch.Generator().manual_seed(settings.seed)
    support = model.support if settings.support_weight > 0 else None
    order, at, losses = torch.randperm(len(x), generator=gen), 0, []
    for step in range(settings.steps):
        if at + settings.batch_size > len(order) and at > 0:
            order, at = torch.randperm(len(x), generator=gen), 0
        idx = order[at:at + settings.batch_size]
        at += len(idx)
        loss = kd_loss(module(x[idx]), targets[idx], settings.temperature)
        if support is not None:
            pick = torch.randperm(len(support[1]), generator=gen)[:settings.batch_size]
            loss = loss + settings.support_weight * F.cross_entropy(
                module(support[0][pick]), support[1][pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, losses[-1])
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            log.info("distill step %d/%d: loss %.4f (mean of the last %d %.4f), lr %.2e",
                     step + 1, settings.steps, losses[-1], min(settings.log_every, len(losses)),
                     sum(losses[-settings.log_every:]) / min(settings.log_every, len(losses)),
                     sched.get_last_lr()[0])
    module.eval()
    module.requires_grad_(False)
    return losses


def _finish_batch_norm(model: AdaptedModel, teacher: AdaptedModel, x: Tensor
                       ) -> AdaptedModel:
    """A student with BatchNorm: frozen on the statistics of up to
    :data:`BATCH_NORM_INPUTS` of its training inputs (unless the teacher predicts with batch
    statistics); the module rebuilt from its architecture, so that it loads back."""
    from metafit.deploy.materialise import build_module, freeze_batch_norm

    if model.kind == "text":  # no BatchNorm; built from its encoder config already
        return model
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.module.modules())
    mode = "none" if not has_bn else (
        "batch" if teacher.arch.get("batch_norm") == "batch" else "support")
    module = model.module
    if mode == "support":
        freeze_batch_norm(module, x[:BATCH_NORM_INPUTS])
    arch = {**model.arch, "batch_norm": mode}
    rebuilt = build_module(arch, model.recipe)
    rebuilt.load_state_dict(module.state_dict(), strict=True)
    return model.derived(module=rebuilt, arch=arch)


def _refit_temperature(teacher: AdaptedModel, info: dict[str, Any], held_t: Tensor,
                       held_s: Tensor, where: str) -> dict[str, Any]:
    """``info`` with the student's temperature matched to the teacher's calibrated
    probabilities (when the teacher is calibrated)."""
    from metafit.evaluation.calibration import fit_temperature, nll

    if "calibration" not in teacher.info and teacher.temperature == 1.0:
        return info
    target = torch.softmax(held_t.double() / teacher.temperature, -1)  # [H, N]
    t = fit_temperature(held_s, target, prior_scale=None)
    info = {**info, "temperature": t, "calibration": {
        "method": "temperature matched to the teacher's calibrated probabilities",
        "inputs": where, "count": len(held_s), "teacher_temperature": teacher.temperature,
        "cross_entropy_before": nll(held_s, target), "cross_entropy_after":
            nll(held_s, target, t)}}
    log.info("student temperature %.3g (teacher's %.3g), matched on %d %s", t,
             teacher.temperature, len(held_s), where)
    return info


def _refit_reject(teacher: AdaptedModel, student: AdaptedModel, held_t: Tensor,
                  held_s: Tensor, where: str) -> RejectSetting | None:
    """The teacher's reject setting with a threshold for the student's scores: the one
    that rejects the share of the ``held_*`` inputs that the teacher rejects."""
    setting = teacher.reject
    if setting is None:
        return None
    probe = student.derived(reject=RejectSetting(setting.score, None, setting.recall,
                                                 setting.label, {}))
    if setting.threshold is None:
        return probe.reject
    scores_t = teacher.logits_and_scores(held_t)[1]  # [H]
    scores_s = probe.logits_and_scores(held_s)[1]  # [H]
    rate = float((scores_t < setting.threshold).float().mean())
    ordered = scores_s.sort().values
    k = min(round(rate * len(ordered)), len(ordered) - 1)
    threshold = float(ordered[k])
    student_rate = float((scores_s < threshold).float().mean())
    fitted = {"how": "matched to the teacher's reject rate on unlabelled inputs",
              "inputs": where, "count": len(held_s), "teacher_threshold": setting.threshold,
              "teacher_reject_rate": round(rate, 6),
              "student_reject_rate": round(student_rate, 6),
              "temperature": student.temperature}
    log.info("student reject threshold %.4g (%s): rejects %.1f%% of %d %s, the teacher %.1f%%",
             threshold, setting.score, 100 * student_rate, len(held_s), where,
             100 * rate)
    return RejectSetting(setting.score, threshold, setting.recall, setting.label, fitted)


def _split(count: int, share: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``[M - H]`` of the inputs trained on and ``[H]`` held out (``share`` of
    them, at least one when ``share > 0``), drawn with ``seed``."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 1))
    held = 0 if share == 0 else max(1, round(share * count))
    return order[held:].sort().values, order[:held].sort().values


def distill(teacher: AdaptedModel, student: str | Student, inputs: Sequence[Any],
            settings: DistillSettings | None = None,
            progress: Callable[[int, float], None] | None = None,
            teacher_logits: Tensor | None = None) -> tuple[AdaptedModel, dict[str, Any]]:
    """``teacher`` distilled into ``student`` (a spec, :func:`parse_student`) on the
    unlabelled ``inputs`` (texts or images, :func:`read_unlabelled`); the student model
    and a report (sizes, agreement with the teacher on the held-out inputs before and
    after training, the settings, seconds).

    ``progress(step, loss)`` is called after every step. ``teacher_logits [M, N]``: the
    teacher's logits of ``inputs`` when already computed (several students distilled on
    the same inputs); otherwise computed here.

    Raises:
        ValueError: a quantized teacher (distil the float model), a bad student spec or
            settings.
        InputError: too few inputs, inputs too large, an input that cannot be
            preprocessed.
    """
    from metafit.deploy.compress import is_quantized
    from metafit.models.base import count_parameters

    settings = settings or DistillSettings()
    if is_quantized(teacher.module):
        raise ValueError("the teacher is quantized: distil from the float model (and "
                         "quantize the student afterwards if you like)")
    if isinstance(student, str):
        student = parse_student(student, teacher)
    if len(inputs) < MIN_UNLABELLED:
        raise InputError(f"{len(inputs)} unlabelled inputs; distillation needs at least "
                         f"{MIN_UNLABELLED}")
    if settings.support_weight > 0 and teacher.support is None:
        raise ValueError("support_weight > 0 needs the teacher's stored support set, and "
                         "it has none")
    start = time.perf_counter()
    model, init = _initial(teacher, student, settings.seed)
    _check_memory(teacher, model, len(inputs))
    x_t = preprocess_inputs(teacher, inputs)  # [M, *x]
    x_s = x_t if model.preprocessor is teacher.preprocessor else preprocess_inputs(model, inputs)
    log.info("distilling %s into %s on %d unlabelled inputs: teacher's soft labels first",
             teacher, student.spec, len(inputs))
    if teacher_logits is not None and teacher_logits.shape != (len(inputs),
                                                               len(teacher.label_names)):
        raise ValueError(f"teacher_logits {tuple(teacher_logits.shape)} for {len(inputs)} "
                         f"inputs and {len(teacher.label_names)} classes")
    z_t = teacher.logits(x_t) if teacher_logits is None else teacher_logits  # [M, N]
    train, held_out = _split(len(inputs), settings.held_out, settings.seed)
    held = held_out if len(held_out) else train
    where = "held-out unlabelled inputs" if len(held_out) else "unlabelled inputs"
    before = _agreement(z_t[held], model.logits(x_s[held]), settings.temperature)
    lr = settings.learning_rate(teacher.kind)
    losses = _train(model, x_s[train], z_t[train], settings, lr, progress)
    model = _finish_batch_norm(model, teacher, x_s[train])
    z_s = model.logits(x_s[held])  # [H, N]
    after = _agreement(z_t[held], z_s, settings.temperature)
    info = _refit_temperature(teacher, model.info, z_t[held], z_s, where)
    model = model.derived(info=info)
    model = model.derived(reject=_refit_reject(teacher, model, x_t[held], x_s[held], where))
    sizes = {"teacher": count_parameters(teacher.module)[1],
             "student": count_parameters(model.module)[1]}
    record: dict[str, Any] = {
        "student": student.spec, "kind": student.kind,
        **({"layers": list(student.layers)} if student.kind == "layers" else {}),
        "unlabelled": len(inputs), "trained_on": len(train),
        "held_out": len(held_out), "steps": settings.steps,
        "batch_size": settings.batch_size, "lr": lr, "temperature": settings.temperature,
        "support_weight": settings.support_weight, "seed": settings.seed,
        "parameters": sizes, "init": init,
        "agreement_before": before["agreement"], "agreement": after["agreement"],
        "kl_before": before["kl"], "kl": after["kl"],
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 6) if losses else None}
    model = model.derived(compression={"quantize": None, "prune": None, "distill": record})
    report = {**record, "seconds": round(time.perf_counter() - start, 2)}
    log.info("distilled into %s (%s of the teacher's %s parameters) in %.1f s: agreement "
             "with the teacher on %d %s %.3f (untrained %.3f)", student.spec,
             f"{sizes['student']:,}", f"{sizes['teacher']:,}", report["seconds"], len(held),
             where, after["agreement"], before["agreement"])
    return model, report
