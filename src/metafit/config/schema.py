"""The schema of a run: one flat pydantic model, :class:`Recipe`, and the checks and
conversions of its values (unknown keys, validation messages, YAML).

A recipe is flat on purpose: every key can be overridden as ``key=value``
(``metafit train omniglot_5w1s_maml inner_steps=5``) and searched by name in a tuning
study, with no dotted paths to remember. Unknown keys are errors naming the key and the
nearest valid ones. Finding, reading and overriding recipe files: :mod:`metafit.config.recipe`.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from metafit.config.files import RecipeError, short_repr

__all__ = [
    "CLASSIFIERS",
    "FIELDS",
    "TEXT_DATASETS",
    "Recipe",
    "check_keys",
    "make_recipe",
    "recipe_to_yaml",
]


#: Test-time classifiers an algorithm may take instead of its own (``None``); the
#: recipe key ``classifier``.
CLASSIFIERS = ("logistic",)

DatasetName = Literal["omniglot", "glyphs", "image_folder", "image_table", "idx", "text_table",
                      "text_csv", "sinusoid"]
#: The datasets of labelled texts (``text_csv``: the former name of ``text_table``).
TEXT_DATASETS = ("text_table", "text_csv")
#: The datasets ``split_scheme: all_classes`` splits by example.
ALL_CLASSES_DATASETS = ("omniglot", "image_folder", "image_table", *TEXT_DATASETS)
ModelName = Literal["conv4", "mlp", "resnet12", "resnet18", "text"]


class Recipe(BaseModel):
    """Everything a run needs, with defaults for 5-way 1-shot MAML on 28x28 images."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("custom",
        description="the run's name (default run directory runs/NAME, MLflow experiment)")
    description: str = Field("", description='one line shown by `metafit recipes`')

    # -- data ------------------------------------------------------------------------
    dataset: DatasetName = Field("glyphs",
        description="where the tasks come from (data_root points at its files; glyphs is "
        "built in): text_table (text_csv, its former name) and image_table read a CSV, "
        "JSON Lines or Parquet file or a datasets save_to_disk directory (docs/data.md)")
    data_root: str | None = Field(None, description="directory or file of the dataset")
    image_size: int = Field(28, gt=0, description='images are resized to image_size x image_size')
    channels: Literal[1, 3] = Field(1, description='1 (greyscale) or 3 (RGB) input channels')
    class_split: tuple[int, int, int] | None = Field(
        None, description="image_folder / image_table / text_table: train, val, test class "
        "counts (default 60/20/20%)")
    split_seed: int = Field(0, description="image_folder / image_table / text_table: seed of "
                            "the class shuffle before the split; Omniglot: of its alphabet or "
                            "character shuffle; all_classes: of each class's examples")
    split_classes: bool = Field(True, description="image_folder / image_table / text_table: "
                                "false: every "
                                "split is the whole dataset (a fixed label set, e.g. "
                                "BANKING77's K-shot protocol; validation is then not "
                                "held out)")
    rotations: bool = Field(True, description="Omniglot: rotations by 90/180/270 as classes")
    split_scheme: Literal["alphabet", "standard", "vinyals", "all_classes"] = Field(
        "alphabet", description="Omniglot: 'alphabet', 'standard' or 'vinyals' (1200 "
        "training characters, the papers' protocol), held-out classes; any of omniglot, "
        "image_folder, image_table, text_table: 'all_classes' meta-trains on every class "
        "and validates and tests on held-out examples of them (holdout_fraction; test "
        "figures are then not about unseen classes); other datasets ignore the other values")
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="split_scheme all_classes: the fraction of each class's "
        "examples held out of meta-training, half for val and half for test")

    # -- episodes --------------------------------------------------------------------
    ways: int = Field(5, gt=0, description='classes per training task (N of N-way)')
    shots: int = Field(1, gt=0,
        description="labelled examples per class in a task's support set (K of K-shot)")
    queries: int = Field(15, gt=0,
        description="examples per class in a task's query set (what the adapted model is "
        "scored on)")
    test_ways: int | None = Field(None, gt=0, description="default: ways")
    test_shots: int | None = Field(None, gt=0, description="default: shots")
    test_queries: int | None = Field(None, gt=0, description="default: queries")

    # -- model -----------------------------------------------------------------------
    model: ModelName = Field("conv4",
        description='the backbone (text: a local Hugging Face encoder, text_model)')
    hidden: int = Field(64, gt=0, description="filters (conv4) or units (mlp)")
    depth: int = Field(4, gt=0, description="blocks (conv4) or hidden layers (mlp)")
    strided: bool = Field(False, description="conv4: stride-2 convolutions, no pooling")

    # -- table columns (dataset: text_table, image_table) ---------------------------
    text_column: str = Field("text", description="text_table: the column holding the text")
    label_column: str = Field("category", description="text_table / image_table: the column "
                              "holding the label (a string, or an integer)")
    image_column: str = Field("image", description="image_table: the column holding each "
                              "image, encoded (bytes) or as a path relative to the table's "
                              "folder")
    absolute_image_paths: bool = Field(
        False, description="image_table: also accept absolute image paths and paths leading "
        "out of the table's folder (only for a table you trust)")

    # -- text (model: text, dataset: text_table) ------------------------------------
    text_model: str | None = Field(None, description="local Hugging Face model directory "
                                   "(default: the packaged all-MiniLM-L6-v2)")
    max_length: int = Field(64, gt=2, description="tokens per text (longer ones are "
                            "truncated, with a warning)")
    pooling: Literal["mean", "cls"] = Field("mean",
        description='text models: mean of the token embeddings or the [CLS] token')
    adapt: Literal["full", "top", "head", "lora"] = Field(
        "full", description="what the inner loop adapts and the outer loop meta-learns: "
        "the whole encoder, its top adapt_layers layers, the head only, or LoRA adapters "
        "(each with the head)")
    adapt_layers: int = Field(2, gt=0, description="adapt: top: transformer layers adapted")
    lora_r: int = Field(8, gt=0, description="adapt: lora: rank")
    lora_alpha: int = Field(16, gt=0, description="adapt: lora: scale alpha (/ r)")
    text_dropout: float = Field(0.0, ge=0, lt=1, description="encoder dropout")
    text_mask: float = Field(0.0, ge=0, lt=1, description="masked-token augmentation: each "
                             "word-piece of a meta-training episode is replaced by the "
                             "tokenizer's mask token with this probability (validation and "
                             "test episodes stay intact)")

    # -- algorithm -------------------------------------------------------------------
    algorithm: str = Field("maml",
        description='a registered algorithm: maml, fomaml, metasgd, anil, reptile, protonet, '
        'finetune, linear_probe (or your own)')
    inner_lr: float = Field(0.4, gt=0,
        description='step size of the inner loop (adaptation to one task)')
    inner_steps: int = Field(1, ge=0, description='inner steps per task during meta-training')
    eval_inner_steps: int | None = Field(None, ge=0, description="default: inner_steps")
    first_order: bool = Field(False,
        description='drop second derivatives (FOMAML-style meta-gradients)')
    lslr: bool = Field(False, description="MAML++ per-step per-layer inner rates")
    finetune_layers: int = Field(0, ge=0, description="FineTune: body blocks refit at test")
    inner_batch: int | None = Field(None, gt=0, description="Reptile: examples per inner "
                                    "step, cycling through the support set (default: all)")
    distance: Literal["sqeuclidean", "cosine"] = Field(
        "sqeuclidean", description="ProtoNet: squared Euclidean distance (the paper's) or "
        "scaled cosine similarity")
    distance_scale: float = Field(10.0, gt=0, description="ProtoNet, distance cosine: the "
                                  "logits' scale (inverse temperature)")
    classifier: Literal["logistic"] | None = Field(
        None, description="test-time classifier of protonet, finetune and linear_probe: "
        "none (the algorithm's own) or logistic (L-BFGS logistic regression on normalised "
        "features, Tian et al. 2020)")
    classifier_penalty: float = Field(1e-4, ge=0, description="classifier logistic: L2 "
                                      "penalty on the head's weights")

    # -- outer loop ------------------------------------------------------------------
    meta_batch: int = Field(32, gt=0, description='tasks per meta-training step')
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam",
        description='the outer optimizer of the meta-parameters')
    outer_lr: float = Field(1e-3, gt=0, description="the outer optimizer's learning rate")
    weight_decay: float = Field(0.0, ge=0, description="the outer optimizer's weight decay")
    iterations: int = Field(1000, gt=0, description='meta-training steps')
    warmup: int = Field(0, ge=0, description="linear warm-up iterations")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("constant",
        description='the outer learning rate over iterations (after warmup)')
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm")
    task_workers: int | None = Field(
        None, gt=0, description="threads running the tasks of a meta-batch (default: auto, "
        "one per intra-op thread on CPU, 1 on GPU; the command line's METAFIT_TASK_WORKERS "
        "overrides)")
    batching: Literal["auto", "loop", "vmap"] = Field(
        "auto", description="algorithms with a per-task and a vmapped form (the MAML "
        "family, Reptile, ProtoNet): tasks one by one (loop) or all at once (vmap); auto: "
        "metafit.execution.plan decides from the device and the model (docs/design.md)")
    vmap_chunk: int | None = Field(
        None, gt=0, description="tasks per vmap call on the batched paths, bounding their "
        "memory (a batched path holds the activations of all its tasks at once); default: "
        "the whole meta-batch")
    time_budget: float | None = Field(
        None, gt=0, description="stop after this many seconds of meta-training steps "
        "(validation excluded); the schedule still runs over `iterations`")
    cudnn_benchmark: bool = Field(
        False, description="on a CUDA device, let cuDNN time its convolution algorithms for "
        "the episodes' fixed shapes and keep the fastest (what it gains: "
        "benchmarks/RESULTS.md, 'On a GPU'); its choice, and so the floats, can differ run "
        "to run")
    cuda_graphs: bool = Field(
        False, description="on a CUDA device, replay each meta-gradient as one captured "
        "CUDA graph (metafit.execution.cuda_graphs): no kernel-launch overhead, the fast path for "
        "small tasks; MAML, FOMAML, Meta-SGD and ANIL")

    # -- validation / evaluation -----------------------------------------------------
    val_every: int = Field(100, gt=0,
        description='iterations between validations (fixed validation episodes)')
    val_episodes: int = Field(100, gt=0, description='episodes per validation')
    patience: int | None = Field(None, gt=0, description="validations without improvement")
    test_episodes: int = Field(600, gt=0,
        description='episodes of `metafit evaluate` (mean with a 95% interval)')

    # -- run -------------------------------------------------------------------------
    seed: int = Field(0,
        description="seeds the model, the samplers (train seed, val seed+1, test seed+2) "
        "and torch")
    device: str = Field("cpu", description='cpu, cuda or cuda:N')
    threads: int | None = Field(None, gt=0, description="torch threads (default: torch's)")
    log_every: int = Field(10, gt=0,
        description='iterations between training records in metrics.jsonl')
    checkpoint_every: int = Field(100, gt=0,
        description='iterations between checkpoints/last.pt writes')
    checkpoint_minutes: float | None = Field(
        10.0, gt=0, description="also save checkpoints/last.pt once this many minutes of "
        "meta-training steps have passed since the last save, so a killed run loses at most "
        "that much (null: only every checkpoint_every iterations)")
    tensorboard: bool = Field(False,
        description='also write TensorBoard event files (the track extra)')
    mlflow: bool = Field(
        False, description="log the run to MLflow (metafit.training.mlflow_logger; the "
        "track extra): the recipe as parameters, the metrics, the run's files, its status")
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (sqlite:///..., file:///..., http://...; "
        "default: MLFLOW_TRACKING_URI, else sqlite:///<parent of the run directory>/"
        "mlflow.db)")
    mlflow_experiment: str | None = Field(
        None, description="MLflow experiment (default: the recipe's name)")
    init_from: str | None = Field(None, description="warm start from a run directory")
    search: dict[str, Any] = Field(default_factory=dict, description="tuning search space")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.dataset == "sinusoid" and self.model != "mlp":
            raise ValueError("dataset 'sinusoid' needs model 'mlp'")
        if (self.dataset in TEXT_DATASETS) != (self.model == "text"):
            raise ValueError("dataset 'text_table' (or 'text_csv') and model 'text' go "
                             f"together (got dataset '{self.dataset}', model '{self.model}')")
        if self.adapt != "full" and self.model != "text":
            raise ValueError(f"adapt '{self.adapt}' is for text models; other models adapt "
                             "all their parameters (ANIL adapts the head)")
        if self.text_mask and self.model != "text":
            raise ValueError(f"text_mask is for text models, not model '{self.model}'")
        if self.split_scheme == "all_classes":
            self._check_all_classes()
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError(f"cuda_graphs needs a CUDA device, not device '{self.device}'")
        if self.classifier is not None and self.is_regression:
            raise ValueError(f"classifier '{self.classifier}' is for classification; "
                             f"dataset '{self.dataset}' is a regression problem")
        return self

    def _check_all_classes(self) -> None:
        if self.dataset not in ALL_CLASSES_DATASETS:
            raise ValueError(f"split_scheme 'all_classes' is for datasets "
                             f"{', '.join(ALL_CLASSES_DATASETS)}, not '{self.dataset}'")
        if not self.split_classes:
            raise ValueError("split_scheme 'all_classes' already puts every class in every "
                             "split; split_classes=false would add the held-out examples "
                             "back to training: drop one of the two")
        if self.class_split is not None:
            raise ValueError("class_split counts classes per split; split_scheme "
                             "'all_classes' splits each class's examples (holdout_fraction)")

    # -- derived values --------------------------------------------------------------
    @property
    def eval_ways(self) -> int:
        return self.test_ways or self.ways

    @property
    def eval_shots(self) -> int:
        return self.test_shots or self.shots

    @property
    def eval_queries(self) -> int:
        return self.test_queries or self.queries

    @property
    def is_regression(self) -> bool:
        return self.dataset == "sinusoid"


FIELDS: tuple[str, ...] = tuple(Recipe.model_fields)


def _nearest(key: object) -> str:
    close = difflib.get_close_matches(str(key), FIELDS, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def check_keys(values: dict[Any, Any], where: str) -> None:
    """Raise :class:`RecipeError` naming any key that is not a recipe field."""
    for key in values:
        if key not in FIELDS:
            raise RecipeError(f"unknown recipe key {short_repr(key)} in {where}{_nearest(key)}")


def make_recipe(values: dict[str, Any], where: str = "the recipe",
                overridden: Collection[str] = ()) -> Recipe:
    """Validate a dict into a :class:`Recipe`, with one readable message per bad key; a
    bad value of a key in ``overridden`` (set on the command line) is blamed on the
    override, not on ``where`` (the file)."""
    check_keys(values, where)
    try:
        return Recipe(**values)
    except ValidationError as e:
        mine = [err for err in e.errors() if err["loc"] and err["loc"][0] in overridden]
        errors = mine or e.errors()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'recipe'}: {err['msg']}"
            f" (got {short_repr(err.get('input'))})"
            for err in errors
        )
        if mine:
            keys = ", ".join(sorted({str(err["loc"][0]) for err in mine}))
            raise RecipeError(f"invalid value in the overrides ({keys}): {problems}") from None
        with_overrides = f" with the overrides of {', '.join(sorted(overridden))}" \
            if overridden else ""
        raise RecipeError(f"invalid values in {where}{with_overrides}: {problems}") from None


def recipe_to_yaml(recipe: Recipe, **extra: Any) -> str:
    """The recipe as YAML (every key, resolved), with ``extra`` keys first."""
    data = {**extra, **recipe.model_dump()}
    return yaml.safe_dump(data, sort_keys=False)
