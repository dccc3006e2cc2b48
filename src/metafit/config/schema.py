"""The schema of a run: one flat pydantic model, :class:`Recipe`, and the checks and
conversions of its values (unknown keys, validation messages, YAML).

A recipe is flat on purpose: every key can be overridden as ``key=value``
(``metafit train omniglot_5w1s_maml inner_steps=5``) and searched by name in a tuning
study, with no dotted paths to remember. Unknown keys are errors naming the key and the
nearest valid ones. Finding, reading and overriding recipe files: :mod:`metafit.config.recipe`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from metafit.config.files import RecipeError, short_repr

__all__ = [
    "CLASSIFIERS",
    "FIELDS",
    "OUTER_STEP_KEYS",
    "PPO_KEYS",
    "RL_DATASETS",
    "RL_KEYS",
    "SHARED_KEYS",
    "SUPERVISED_DATASETS",
    "TEXT_DATASETS",
    "TRPO_KEYS",
    "Recipe",
    "check_keys",
    "check_scope",
    "key_applies",
    "scope_label",
    "make_recipe",
    "recipe_to_yaml",
]


#: Test-time classifiers an algorithm may take instead of its own (``None``); the
#: recipe key ``classifier``.
CLASSIFIERS = ("logistic",)

DatasetName = Literal["omniglot", "glyphs", "image_folder", "image_table", "idx", "text_table",
                      "text_csv", "sinusoid", "rl_nav2d", "rl_bandit", "rl_tabular",
                      "rl_cheetah_vel", "rl_cheetah_dir", "rl_gym", "rl_pendulum"]
SUPERVISED_DATASETS = ("omniglot", "glyphs", "image_folder", "image_table", "idx",
                       "text_table", "text_csv", "sinusoid")
#: The meta-RL task families (:mod:`metafit.rl`): 2D navigation, Bernoulli bandits,
#: random tabular MDPs, pendulums with a mass and a length per task, half-cheetah velocity
#: and direction (MuJoCo through Gymnasium), and a user's Gymnasium environment
#: (``rl_gym``: ``env_factory``, ``task_ranges``).
#: Most environment steps one meta-RL meta-training step may hold (horizon x trajectories
#: x meta_batch; the shipped recipes hold at most 160,000).
MAX_RL_STEPS = 10_000_000
#: Most transition probabilities of one rl_tabular MDP (states x states x actions).
MAX_RL_TABLE = 10_000_000
RL_DATASETS = ("rl_nav2d", "rl_bandit", "rl_tabular", "rl_pendulum", "rl_cheetah_vel",
               "rl_cheetah_dir", "rl_gym")
#: The meta-RL families that run through Gymnasium (the ``rl`` extra).
GYM_RL_DATASETS = ("rl_cheetah_vel", "rl_cheetah_dir", "rl_gym")
#: Algorithms of a meta-RL recipe: MAML-TRPO (second or first order), Reptile with
#: policy-gradient inner steps, ProMP (LVC inner loss, PPO-clipped outer steps with Adam),
#: and the two baselines: TRPO on all tasks without inner steps ("pretrained", fine-tuned
#: at evaluation) and a randomly initialised policy ("scratch", not trained). They are not
#: registered supervised algorithms (docs/rl.md), so their names differ from those.
RL_ALGORITHMS = ("maml_trpo", "fomaml_trpo", "reptile_pg", "promp", "pretrained_trpo",
                 "scratch")
#: The outer steps' own keys: TRPO's trust region and line search, Reptile's step size,
#: ProMP's clipping, PPO steps, KL penalty and Adam rate. :data:`OUTER_STEP_KEYS` gives
#: each meta-RL algorithm its own; any other algorithm refuses them away from the default.
TRPO_KEYS = ("max_kl", "cg_iters", "cg_damping", "ls_max_steps", "ls_backtrack_ratio")
PPO_KEYS = ("clip_eps", "ppo_steps", "inner_kl_penalty", "outer_lr")
OUTER_STEP_KEYS: dict[str, tuple[str, ...]] = {
    "maml_trpo": TRPO_KEYS, "fomaml_trpo": TRPO_KEYS, "pretrained_trpo": TRPO_KEYS,
    "reptile_pg": ("outer_lr",), "promp": PPO_KEYS, "scratch": (),
}
#: What each outer step is, for the messages refusing another's keys.
_OUTER_STEP_NAMES = {"maml_trpo": "a TRPO step", "fomaml_trpo": "a TRPO step",
                     "pretrained_trpo": "a TRPO step", "reptile_pg": "Reptile's update",
                     "promp": "ProMP's clipped PPO steps with Adam", "scratch": "no step"}
#: The datasets of labelled texts (``text_csv``: the former name of ``text_table``).
TEXT_DATASETS = ("text_table", "text_csv")
#: The datasets of images (``augment`` applies to them).
IMAGE_DATASETS = ("omniglot", "glyphs", "image_folder", "image_table", "idx")
#: The image datasets decoded from image files, where ``image_crop`` applies.
FILE_IMAGE_DATASETS = ("omniglot", "image_folder", "image_table")
#: The datasets ``split_scheme: all_classes`` splits by example.
ALL_CLASSES_DATASETS = ("omniglot", "image_folder", "image_table", *TEXT_DATASETS)
ModelName = Literal["conv4", "mlp", "resnet12", "resnet18", "text", "image_encoder"]
#: The models built on a pretrained Hugging Face encoder (they take ``adapt`` scopes).
ENCODER_MODELS = ("text", "image_encoder")


class Recipe(BaseModel):
    """Everything a run needs, with defaults for 5-way 1-shot MAML on 28x28 images."""

    # allow_inf_nan: an infinite or NaN rate, scale or budget trains to NaN and "completes".
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str = Field("custom", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="the run's name (default run directory runs/NAME, MLflow experiment): "
        "letters, digits, '_', '.', '-', starting with a letter or digit (a folder name, "
        "never a path)")
    description: str = Field("", description='one line shown by `metafit recipes`')

    # -- data ------------------------------------------------------------------------
    dataset: DatasetName = Field("glyphs",
        description="where the tasks come from (data_root points at its files; glyphs is "
        "built in): text_table (text_csv, its former name) and image_table read a CSV, "
        "JSON Lines or Parquet file or a datasets save_to_disk directory (docs/data.md); "
        "rl_nav2d, rl_bandit, rl_tabular, rl_pendulum, rl_cheetah_vel, rl_cheetah_dir, "
        "rl_gym: a meta-RL task family (docs/rl.md), whose "
        "recipes take the meta-RL keys and the shared ones only")
    data_root: str | None = Field(None, description="directory or file of the dataset")
    image_size: int = Field(28, gt=0, le=4096,
                            description='images are resized to image_size x image_size')
    channels: Literal[1, 3] = Field(1, description='1 (greyscale) or 3 (RGB) input channels')
    image_crop: Literal["none", "ink"] = Field(
        "none", description="omniglot, image_folder, image_table: 'ink' crops every image "
        "(training data, support sets, inputs) to the square around its drawing before the "
        "resize (handwriting, symbols; metafit.data.ink_crop); 'none' resizes the whole "
        "image")
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
    train_on_val: bool = Field(
        False, description="omniglot (alphabet, standard, vinyals), image_folder, "
        "image_table, text_table (text_csv): meta-train on the validation classes too "
        "(train + val), for the model you deploy once validation has made the choices; "
        "validation still scores the val split, which is then not held out (its figures "
        "are optimistic); test stays held out")
    episode_scheme: Literal["random", "within_alphabet"] = Field(
        "random", description="Omniglot: 'within_alphabet' draws every episode's classes "
        "from one alphabet, its support from some drawers and its queries from others, "
        "and keeps rotations out of validation and test episodes (Lake et al. 2015's "
        "one-shot task; metafit.data.within); 'random': classes from anywhere")

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
        description='the backbone (text: a local Hugging Face encoder, text_model; '
        'image_encoder: a local Hugging Face image encoder, image_model)')
    hidden: int = Field(64, gt=0, description="filters (conv4), units (mlp), the first "
                        "block's filters (resnet12: then 2.5x, 5x, 10x; 64 gives the papers' "
                        "64-160-320-640) or the width (resnet18)")
    depth: int = Field(4, gt=0, description="blocks (conv4) or hidden layers (mlp)")
    strided: bool = Field(False, description="conv4: stride-2 convolutions, no pooling")
    conv_groups: int = Field(1, ge=1, description="conv4: every block after the first "
                             "convolves conv_groups independent groups of hidden/conv_groups "
                             "filters: that many conv4 networks side by side, whose features "
                             "are concatenated (`metafit ensemble` merges trained runs into one)")

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
    adapt_layers: int = Field(2, gt=0, description="adapt: top: transformer layers "
                              "(image_encoder: layers, or ConvNeXt / ResNet stages) adapted")
    lora_r: int = Field(8, gt=0, description="adapt: lora: rank")
    lora_alpha: int = Field(16, gt=0, description="adapt: lora: scale alpha (/ r)")
    text_dropout: float = Field(0.0, ge=0, lt=1, description="encoder dropout")
    text_mask: float = Field(0.0, ge=0, lt=1, description="masked-token augmentation: each "
                             "word-piece of a meta-training episode is replaced by the "
                             "tokenizer's mask token with this probability (validation and "
                             "test episodes stay intact)")
    augment: Literal["none", "affine"] = Field(
        "none", description="image augmentation of meta-training episodes: 'affine' "
        "distorts every support and query image with its own random rotation, shear, "
        "scale and shift (Koch et al. 2015's ranges; metafit.data.augment); validation "
        "and test episodes stay intact")
    augment_strength: float = Field(1.0, gt=0, le=3, description="augment: affine: "
                                    "multiplies the ranges of the distortions")

    # -- image encoders (model: image_encoder; docs/images.md) ------------------------
    image_model: str | None = Field(None, description="model image_encoder: local Hugging "
                                    "Face image model directory (config.json, weights, "
                                    "preprocessor_config.json): ViT, DINOv2, CLIP vision, "
                                    "ConvNeXt, ResNet")

    # -- algorithm -------------------------------------------------------------------
    algorithm: str = Field("maml",
        description='a registered algorithm: maml, fomaml, metasgd, anil, reptile, protonet, '
        'finetune, linear_probe (or your own); meta-RL recipes name theirs: maml_trpo, '
        'fomaml_trpo (first order), reptile_pg, promp, pretrained_trpo or scratch '
        '(docs/rl.md)')
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
    learn_scale: bool = Field(False, description="ProtoNet, distance cosine: meta-learn the "
                              "scale, starting from distance_scale (Meta-Baseline, Chen et "
                              "al. 2021)")
    classifier: Literal["logistic"] | None = Field(
        None, description="test-time classifier of protonet, finetune and linear_probe: "
        "none (the algorithm's own) or logistic (L-BFGS logistic regression on normalised "
        "features, Tian et al. 2020)")
    classifier_penalty: float = Field(1e-4, ge=0, description="classifier logistic: L2 "
                                      "penalty on the head's weights")

    # -- outer loop ------------------------------------------------------------------
    meta_batch: int = Field(32, gt=0, le=100_000, description='tasks per meta-training step')
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam",
        description='the outer optimizer of the meta-parameters')
    outer_lr: float = Field(1e-3, gt=0, description="the outer optimizer's learning rate; "
                            "meta-RL: reptile_pg's outer step size epsilon, promp's Adam "
                            "rate (no other meta-RL algorithm's)")
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
    precision: Literal["float32", "tf32", "bf16", "fp16"] = Field(
        "float32", description="the meta-gradient's floating-point format: float32 (torch's "
        "defaults), tf32 (CUDA: TF32 matmuls and convolutions), bf16 or fp16 (every forward "
        "pass of the inner and outer loop under torch.autocast, second order through it; "
        "fp16 with dynamic loss scaling); a GPU setting: on a CPU bf16 is slower than "
        "float32 (docs/design.md, 'Mixed precision'). Evaluation stays float32")

    # -- meta-RL (datasets rl_*; docs/rl.md) --------------------------------------------
    horizon: int | None = Field(None, gt=0, le=100_000, description="meta-RL: steps per episode "
                                "(default: the family's: rl_nav2d 100, rl_bandit 10, "
                                "rl_tabular 10, rl_pendulum 200, rl_cheetah_vel and "
                                "rl_cheetah_dir 200; rl_gym needs it)")
    env_factory: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="rl_gym: 'package.module:function' building one task's Gymnasium env "
        "from the task parameters as keyword arguments; the module is imported only if "
        "it is listed in $METAFIT_ENV_MODULES (importing runs its code; docs/rl.md)")
    task_ranges: dict[str, tuple[float, float]] | None = Field(None, description="rl_gym: "
        "each task parameter's uniform range, {name: [low, high]}")
    arms: int = Field(5, ge=2, le=100_000, description="rl_bandit: arms of each bandit")
    states: int = Field(10, gt=0, description="rl_tabular: states of each MDP")
    actions: int = Field(5, ge=2, description="rl_tabular: actions of each MDP")
    mass_range: tuple[float, float] = Field((0.5, 2.0), description="rl_pendulum: each "
                                            "task's mass is uniform in [low, high] "
                                            "(Gymnasium's Pendulum-v1: 1)")
    length_range: tuple[float, float] = Field((0.5, 2.0), description="rl_pendulum: each "
                                              "task's length is uniform in [low, high] "
                                              "(Gymnasium's Pendulum-v1: 1)")
    trajectories: int = Field(20, gt=0, le=100_000,
                              description="meta-RL: trajectories sampled per task "
                              "for each inner step and for the query (pytorch-maml-rl's "
                              "fast_batch_size); meta_batch is the number of tasks")
    policy_hidden: tuple[int, ...] = Field((64, 64), description="meta-RL: widths of the "
                                           "policy MLP's hidden layers")
    policy_activation: Literal["tanh", "relu"] = Field("tanh", description="meta-RL: the "
                                                       "policy MLP's nonlinearity")
    inner_lr_decay: float = Field(1.0, gt=0,  # finite: the model_config says so
                                  description="meta-RL: every inner step after the first "
                                  "runs at inner_lr x inner_lr_decay (the MAML authors' "
                                  "2D-navigation evaluation: 0.5, i.e. 0.5 then 0.25); 1: "
                                  "one rate")
    normalize_actions: bool = Field(False, description="meta-RL, continuous actions: the "
                                    "Gaussian policy in units of the action bounds (mean = "
                                    "centre + half-range x MLP, std = half-range x "
                                    "exp(log_std)), as rllab's normalize in the MAML "
                                    "paper's released code; off: the env's own units")
    gamma: float = Field(0.99, gt=0, le=1, description="meta-RL: discount of the returns "
                         "and advantages")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="meta-RL: GAE lambda of the "
                              "advantages (1: Monte-Carlo returns minus the baseline)")
    max_kl: float = Field(0.01, gt=0, description="meta-RL: TRPO's trust region, the "
                          "largest mean KL between the query policies before and after an "
                          "outer step")
    cg_iters: int = Field(10, gt=0, description="meta-RL: conjugate-gradient iterations of "
                          "the TRPO step")
    cg_damping: float = Field(1e-5, ge=0, description="meta-RL: damping added to the KL's "
                              "Hessian-vector products")
    ls_max_steps: int = Field(15, gt=0, description="meta-RL: tries of TRPO's backtracking "
                              "line search (no update if none passes)")
    ls_backtrack_ratio: float = Field(0.8, gt=0, lt=1, description="meta-RL: the step's "
                                      "shrink factor between line-search tries")
    inner_objective: Literal["vpg", "lvc"] | None = Field(
        None, description="meta-RL: the inner loss, vpg (REINFORCE, MAML's) or lvc (ProMP's "
        "low-variance curvature loss: the same inner step, the sampling distribution's "
        "term in the second-order meta-gradient); default lvc for promp, else vpg")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="meta-RL, promp: PPO's clipping "
                            "range of the adapted policy's likelihood ratio")
    ppo_steps: int = Field(5, gt=0, description="meta-RL, promp: Adam steps on the clipped "
                           "objective per sampled meta-batch")
    inner_kl_penalty: float = Field(5e-4, ge=0, description="meta-RL, promp: weight eta of "
                                    "the KL between the pre-adaptation policy that sampled "
                                    "and the current one (fixed, no adaptive schedule)")

    # -- validation / evaluation -----------------------------------------------------
    val_every: int = Field(100, gt=0,
        description='iterations between validations (fixed validation episodes)')
    val_episodes: int = Field(100, gt=0, le=1_000_000,
                              description='episodes per validation (meta-RL: '
                              'fixed validation tasks)')
    patience: int | None = Field(None, gt=0, description="validations without improvement")
    test_episodes: int = Field(600, gt=0, le=1_000_000,
        description='episodes of `metafit evaluate` (mean with a 95% interval; meta-RL: '
        'fixed test tasks)')

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
        None, description="MLflow tracking URI (sqlite:///..., http://...; a server only "
        "from the command line, a recipe file may name a local store; MLflow 3 refuses "
        "file:/// stores unless MLFLOW_ALLOW_FILE_STORE=true; default: MLFLOW_TRACKING_URI, "
        "else sqlite:///<parent of the run directory>/mlflow.db)")
    mlflow_experiment: str | None = Field(
        None, description="MLflow experiment (default: the recipe's name)")
    init_from: str | None = Field(None, description="warm start from a run directory (its "
                                  "best checkpoint; from a run of another algorithm, the "
                                  "model's body only)")
    search: dict[str, Any] = Field(default_factory=dict, description="tuning search space")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.dataset == "sinusoid" and self.model != "mlp":
            raise ValueError("dataset 'sinusoid' needs model 'mlp'")
        if (self.dataset in TEXT_DATASETS) != (self.model == "text"):
            raise ValueError("dataset 'text_table' (or 'text_csv') and model 'text' go "
                             f"together (got dataset '{self.dataset}', model '{self.model}')")
        if self.adapt != "full" and self.model not in ENCODER_MODELS:
            raise ValueError(f"adapt '{self.adapt}' is for text models and image_encoder; "
                             "other models adapt all their parameters (ANIL adapts the "
                             "head)")
        if (self.image_model is not None) != (self.model == "image_encoder"):
            raise ValueError("model 'image_encoder' and image_model (its local Hugging Face "
                             "directory) go together (got model "
                             f"'{self.model}', image_model {self.image_model!r})")
        if self.text_mask and self.model != "text":
            raise ValueError(f"text_mask is for text models, not model '{self.model}'")
        if self.augment != "none" and self.dataset not in IMAGE_DATASETS:
            raise ValueError(f"augment '{self.augment}' is for image datasets "
                             f"({', '.join(IMAGE_DATASETS)}), not '{self.dataset}'")
        if self.image_crop != "none" and self.dataset not in FILE_IMAGE_DATASETS:
            raise ValueError(f"image_crop '{self.image_crop}' is for datasets decoded from "
                             f"image files ({', '.join(FILE_IMAGE_DATASETS)}), not "
                             f"'{self.dataset}'")
        if self.split_scheme == "all_classes":
            self._check_all_classes()
        if self.train_on_val:
            self._check_train_on_val()
        if self.conv_groups != 1 and (self.model != "conv4"
                                      or self.hidden % self.conv_groups):
            raise ValueError(f"conv_groups={self.conv_groups} is for model 'conv4' with "
                             f"hidden a multiple of it (got model '{self.model}', hidden "
                             f"{self.hidden})")
        if self.episode_scheme != "random" and self.dataset != "omniglot":
            raise ValueError(f"episode_scheme '{self.episode_scheme}' is for dataset "
                             f"'omniglot' (alphabets and drawers), not '{self.dataset}'")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError(f"cuda_graphs needs a CUDA device, not device '{self.device}'")
        if self.precision == "tf32" and not self.device.startswith("cuda"):
            raise ValueError(f"precision 'tf32' needs a CUDA device, not device "
                             f"'{self.device}' (float32 or bf16 run anywhere)")
        if self.classifier is not None and self.is_regression:
            raise ValueError(f"classifier '{self.classifier}' is for classification; "
                             f"dataset '{self.dataset}' is a regression problem")
        foreign = [key for key in FIELDS if not key_applies(key, self.dataset)
                   and getattr(self, key) != _DEFAULTS[key]]
        if foreign:
            raise ValueError(_scope_message(foreign[0], self.dataset))
        if self.is_rl:
            self._check_rl()
        return self

    def _check_rl(self) -> None:
        """The meta-RL recipe's own constraints."""
        if self.algorithm not in RL_ALGORITHMS:
            raise ValueError(f"algorithm '{self.algorithm}' is not a meta-RL algorithm; "
                             f"dataset '{self.dataset}' trains with one of "
                             f"{', '.join(RL_ALGORITHMS)} (docs/rl.md)")
        if self.algorithm == "reptile_pg" and self.inner_steps < 1:
            raise ValueError("inner_steps must be at least 1 for algorithm 'reptile_pg': "
                             "with no inner step its update theta_K - theta is 0")
        own = OUTER_STEP_KEYS[self.algorithm]
        for key in (*TRPO_KEYS, *PPO_KEYS, "outer_lr"):
            if key not in own and getattr(self, key) != _DEFAULTS[key]:
                raise ValueError(_outer_key_message(key, self.algorithm))
        if self.rl_inner_objective == "lvc" and (self.rl_first_order
                                                 or self.rl_train_inner_steps == 0):
            raise ValueError(f"inner_objective 'lvc' changes only the second-order "
                             f"meta-gradient; algorithm '{self.algorithm}'"
                             f"{' with first_order' if self.first_order else ''} takes "
                             "none (its inner step is the same with vpg)")
        if self.device != "cpu":
            raise ValueError(f"meta-RL recipes run on the CPU for now, not device "
                             f"'{self.device}' (docs/rl.md)")
        if not self.policy_hidden or min(self.policy_hidden) < 1:
            raise ValueError(f"policy_hidden must be one or more positive widths, got "
                             f"{list(self.policy_hidden)}")
        if len(self.policy_hidden) > 16 or max(self.policy_hidden) > 4096:
            raise ValueError(f"policy_hidden must be at most 16 widths of at most 4096, got "
                             f"{list(self.policy_hidden)[:20]}")
        steps = (self.horizon or 0) * self.trajectories * self.meta_batch
        if steps > MAX_RL_STEPS:
            # a meta-training step holds every transition of its tasks in memory
            raise ValueError(f"horizon x trajectories x meta_batch = {steps:,} environment "
                             f"steps in one meta-training step, over the limit of "
                             f"{MAX_RL_STEPS:,} (they are all held in memory)")
        if self.dataset == "rl_tabular" and self.states * self.states * self.actions \
                > MAX_RL_TABLE:
            raise ValueError(f"rl_tabular: states x states x actions = "
                             f"{self.states * self.states * self.actions:,} transition "
                             f"probabilities per MDP, over the limit of {MAX_RL_TABLE:,}")
        for key in ("mass_range", "length_range"):
            low, high = getattr(self, key)
            if not 0 < low <= high:
                raise ValueError(f"{key} must be [low, high] with 0 < low <= high, got "
                                 f"{[low, high]}")
        if self.dataset == "rl_gym":
            self._check_rl_gym()

    def _check_rl_gym(self) -> None:
        """``rl_gym`` names its env factory, its task ranges and its horizon."""
        missing = [k for k in ("env_factory", "task_ranges", "horizon")
                   if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dataset 'rl_gym' needs {', '.join(missing)} (docs/rl.md, "
                             "'Your own environment')")
        assert self.task_ranges is not None
        if not self.task_ranges or len(self.task_ranges) > 64:
            raise ValueError("task_ranges must name 1 to 64 task parameters")
        for name, (low, high) in self.task_ranges.items():
            if not name.isidentifier():
                raise ValueError(f"task_ranges: '{name}' is not a valid parameter name")
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"task_ranges.{name}: need finite low <= high, got "
                                 f"[{low}, {high}]")

    def _check_train_on_val(self) -> None:
        if self.dataset not in ALL_CLASSES_DATASETS:
            raise ValueError(f"train_on_val is for datasets split by class "
                             f"({', '.join(ALL_CLASSES_DATASETS)}), not '{self.dataset}'")
        if self.split_scheme == "all_classes" or not self.split_classes:
            what = ("split_scheme 'all_classes'" if self.split_scheme == "all_classes"
                    else "split_classes=false")
            raise ValueError(f"train_on_val adds the validation classes to training; {what} "
                             "already trains on every class: drop one of the two")

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

    @property
    def is_rl(self) -> bool:
        """Whether the recipe meta-trains a policy on a task family (:data:`RL_DATASETS`)."""
        return self.dataset in RL_DATASETS

    @property
    def rl_first_order(self) -> bool:
        """Meta-RL: whether the meta-gradient drops second derivatives (``fomaml_trpo``,
        ``reptile_pg``, or ``first_order``)."""
        return self.first_order or self.algorithm in ("fomaml_trpo", "reptile_pg")

    @property
    def rl_train_inner_steps(self) -> int:
        """Meta-RL: inner steps per task during training: ``inner_steps``, except 0 for
        the baselines ``pretrained_trpo`` and ``scratch``, whose ``inner_steps`` is only
        the default of the evaluation's fine-tuning steps."""
        return 0 if self.algorithm in ("pretrained_trpo", "scratch") else self.inner_steps

    @property
    def rl_inner_objective(self) -> str:
        """Meta-RL: the inner loss, ``inner_objective`` or the algorithm's own (``lvc`` for
        ``promp``, ``vpg`` otherwise)."""
        if self.inner_objective is not None:
            return self.inner_objective
        return "lvc" if self.algorithm == "promp" and not self.first_order else "vpg"

    @property
    def rl_meta_trained(self) -> bool:
        """Meta-RL: whether training changes the policy (all but ``scratch``)."""
        return self.algorithm != "scratch"

    def applicable_dump(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """``model_dump`` of the keys that apply to this recipe's dataset
        (:func:`key_applies`): what ``config.yaml``, checkpoints and ``recipes show``
        hold. A supervised recipe's dump is the same as before meta-RL keys existed."""
        return {k: v for k, v in self.model_dump(mode=mode).items()
                if key_applies(k, self.dataset)}


FIELDS: tuple[str, ...] = tuple(Recipe.model_fields)
_DEFAULTS: dict[str, Any] = {k: info.get_default(call_default_factory=True)
                             for k, info in Recipe.model_fields.items()}

#: Keys every recipe may set, supervised or meta-RL.
SHARED_KEYS: tuple[str, ...] = (
    "name", "description", "dataset", "algorithm", "inner_lr", "inner_steps",
    "eval_inner_steps", "first_order", "meta_batch", "outer_lr", "iterations", "time_budget",
    "val_every", "val_episodes", "patience", "test_episodes", "seed", "device", "threads",
    "log_every", "checkpoint_every", "checkpoint_minutes", "tensorboard", "mlflow",
    "mlflow_uri", "mlflow_experiment", "search",
)

#: Meta-RL keys and the datasets each applies to; every key neither here nor in
#: :data:`SHARED_KEYS` is a supervised key.
RL_KEYS: dict[str, tuple[str, ...]] = {
    "horizon": RL_DATASETS, "arms": ("rl_bandit",), "states": ("rl_tabular",),
    "actions": ("rl_tabular",), "mass_range": ("rl_pendulum",),
    "length_range": ("rl_pendulum",), "env_factory": ("rl_gym",), "task_ranges": ("rl_gym",),
    "trajectories": RL_DATASETS, "policy_hidden": RL_DATASETS,
    "policy_activation": RL_DATASETS, "normalize_actions": RL_DATASETS,
    "inner_lr_decay": RL_DATASETS,
    "gamma": RL_DATASETS, "gae_lambda": RL_DATASETS,
    "max_kl": RL_DATASETS, "cg_iters": RL_DATASETS, "cg_damping": RL_DATASETS,
    "ls_max_steps": RL_DATASETS, "ls_backtrack_ratio": RL_DATASETS,
    "inner_objective": RL_DATASETS, "clip_eps": RL_DATASETS, "ppo_steps": RL_DATASETS,
    "inner_kl_penalty": RL_DATASETS,
}


def _outer_key_message(key: str, algorithm: str) -> str:
    """Why ``algorithm`` refuses another outer step's ``key``."""
    owners = [a for a, keys in OUTER_STEP_KEYS.items() if key in keys]
    if key == "outer_lr":
        what = "reptile_pg's outer step size (promp's Adam rate)"
    else:
        what = f"a key of {', '.join(owners)}"
    return (f"{key} is {what}; algorithm '{algorithm}' does not use it (its outer step: "
            f"{_OUTER_STEP_NAMES[algorithm]})")


def _scope(key: str) -> tuple[str, ...]:
    """The datasets whose recipes may set ``key``."""
    if key in SHARED_KEYS:
        return (*SUPERVISED_DATASETS, *RL_DATASETS)
    return RL_KEYS.get(key, SUPERVISED_DATASETS)


def scope_label(key: str) -> str:
    """Which recipes may set ``key``: ``all``, ``supervised``, ``meta-RL`` or the one
    dataset it belongs to (``rl_bandit``)."""
    scope = _scope(key)
    if scope == SUPERVISED_DATASETS:
        return "supervised"
    if scope == RL_DATASETS:
        return "meta-RL"
    return ", ".join(scope) if len(scope) < len(SUPERVISED_DATASETS + RL_DATASETS) else "all"


def key_applies(key: str, dataset: str) -> bool:
    """Whether a recipe of ``dataset`` may set ``key`` (supervised keys on supervised
    datasets, meta-RL keys on their families, shared keys everywhere)."""
    return dataset in _scope(key)


def _scope_message(key: str, dataset: str, where: str | None = None) -> str:
    scope = _scope(key)
    if scope == SUPERVISED_DATASETS:
        owner = "supervised recipes"
    elif scope == RL_DATASETS:
        owner = f"meta-RL recipes (datasets {', '.join(RL_DATASETS)})"
    else:
        owner = f"dataset {', '.join(scope)}"
    kind = "a meta-RL task family" if dataset in RL_DATASETS else "supervised"
    said = f"key '{key}'" if where is None else f"key '{key}' in {where}"
    return (f"{said} is for {owner} only; dataset '{dataset}' is {kind} "
            "(`metafit recipes keys` says which keys apply where)")


def check_scope(values: dict[Any, Any], where: str, dataset: object = None) -> None:
    """Raise :class:`RecipeError` for a key in ``values`` (a recipe file's keys, overrides,
    a run's ``config.yaml``) that does not apply to ``dataset`` (default: theirs) even at
    its default value (:func:`key_applies`); ``where`` names them. An unknown dataset is
    left to the schema's own message."""
    if dataset is None:
        dataset = values.get("dataset", _DEFAULTS["dataset"])
    if not isinstance(dataset, str) or dataset not in (*SUPERVISED_DATASETS, *RL_DATASETS):
        return
    for key in values:
        if key in FIELDS and not key_applies(key, dataset):
            raise RecipeError(_scope_message(key, dataset, where))


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
        # a whole-recipe check (empty loc) already names the values it compares: the
        # input would be the whole recipe, noise at the end of the line
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'recipe'}: {err['msg']}"
            + (f" (got {short_repr(err.get('input'))})" if err["loc"] else "")
            for err in errors
        )
        if mine:
            keys = ", ".join(sorted({str(err["loc"][0]) for err in mine}))
            raise RecipeError(f"invalid value in the overrides ({keys}): {problems}") from None
        with_overrides = f" with the overrides of {', '.join(sorted(overridden))}" \
            if overridden else ""
        raise RecipeError(f"invalid values in {where}{with_overrides}: {problems}") from None


def recipe_to_yaml(recipe: Recipe, **extra: Any) -> str:
    """The recipe as YAML (every key that applies to its dataset, resolved:
    :meth:`Recipe.applicable_dump`), with ``extra`` keys first."""
    data = {**extra, **recipe.applicable_dump()}
    return yaml.safe_dump(data, sort_keys=False)
