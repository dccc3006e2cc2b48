"""Read a trained run back: its recipe, its algorithm at a checkpoint, its evaluation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import torch
from torch import nn

from metafit.algorithms.from_recipe import build_algorithm
from metafit.config.recipe import RecipeError
from metafit.config.schema import ENCODER_MODELS, Recipe, make_recipe
from metafit.data.sampler import EpisodeSampler
from metafit.data.splits import Split, load_split
from metafit.distributed import SINGLE, DistContext
from metafit.evaluation.protocol import BatchNormSetting, EvalResult, evaluate
from metafit.evaluation.rl import RLEvalResult
from metafit.io import atomic_write_text
from metafit.runs.directory import RunDir, check_architecture, load_checkpoint, restore_state

__all__ = ["load_trained", "evaluate_run", "split_sampler", "record_evaluation",
           "check_count", "SPLIT_SEED_OFFSET"]

# Sampler seeds per split, offset from the recipe's seed: the trainer samples training
# tasks with seed, validates on fixed episodes with seed + 1; tests use seed + 2.
SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}

Result = TypeVar("Result", EvalResult, RLEvalResult)


def check_count(name: str, value: int | None, minimum: int = 1, default: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is None or an integer ``>= minimum``: a count
    the user asked for (``--episodes 0`` is an error, never a silent default); ``default``
    says what leaving it out gives, for the message."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        hint = f" (leave it out for {default})" if default else ""
        raise ValueError(f"{name} must be {what}, got {value!r}{hint}")


def load_trained(run: str | Path, which: str = "best", device: str | None = None,
                 classifier: str | None = None,
                 penalty: float | None = None) -> tuple[Recipe, nn.Module]:
    """The recipe and the algorithm restored from ``run/checkpoints/{which}.pt``, on
    ``device`` (default: the recipe's; a CUDA run read on a machine without CUDA is loaded
    on the CPU, with a warning). ``classifier``: a test-time classifier instead of the
    recipe's (``"logistic"``, see :mod:`metafit.algorithms.heads`); ``penalty``: its L2
    penalty instead of the recipe's ``classifier_penalty``. The returned recipe says so.

    Raises:
        FileNotFoundError: ``run`` is not a run directory.
        CheckpointError: the checkpoint is missing, corrupt or of another architecture.
        RecipeError: an invalid classifier or penalty, or a penalty for a run without a
            test-time classifier.
        ValueError: a classifier the run's algorithm does not take; a meta-RL run (read
            by :func:`metafit.runs.rl.load_rl_trained`).
    """
    rd = RunDir(run)
    recipe = rd.read_recipe()
    if recipe.is_rl:
        raise ValueError(f"{run} is a meta-RL run (dataset '{recipe.dataset}'): `metafit "
                         "evaluate` and `metafit report` read it (metafit.runs.rl); "
                         "adapting and serving take supervised runs")
    recipe = with_classifier(recipe, classifier, penalty, str(run))
    path = rd.trained_checkpoint(which)
    ckpt = load_checkpoint(path)
    classes = ckpt.get("num_train_classes")
    if recipe.model not in ENCODER_MODELS:  # sizes first, on the meta device: a forged config.yaml
        with torch.device("meta"):  # cannot make this allocate without bound
            check_architecture(build_algorithm(recipe, classes), ckpt["algorithm"], str(path))
    algo = build_algorithm(recipe, classes)
    restore_state(algo, ckpt, str(path))
    target = device or recipe.device
    if target.startswith("cuda") and not torch.cuda.is_available():
        if device is None:
            warnings.warn(f"{run} was trained on {target}, but torch sees no CUDA device: "
                          "loading it on the CPU", stacklevel=2)
            target = "cpu"
        else:
            raise ValueError(f"device {target!r} asked for, but torch sees no CUDA device")
    algo.to(target)
    algo.eval()
    return recipe, algo


def with_classifier(recipe: Recipe, classifier: str | None, penalty: float | None,
                    where: str) -> Recipe:
    """``recipe`` with its test-time ``classifier`` and ``classifier_penalty`` overridden
    (``None``: keep the recipe's); ``where`` names the recipe in errors.

    Raises:
        RecipeError: an invalid override, or ``penalty`` for a recipe left without a
            classifier (the penalty is the logistic head's).
    """
    if classifier is None and penalty is None:
        return recipe
    overrides: dict[str, Any] = {}
    if classifier is not None:
        overrides["classifier"] = classifier
    if penalty is not None:
        overrides["classifier_penalty"] = penalty
    said = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    recipe = make_recipe({**recipe.model_dump(), **overrides}, f"{where} with {said}")
    if penalty is not None and recipe.classifier is None:
        raise RecipeError(f"{where}: a classifier penalty ({penalty!r}) needs a test-time "
                          f"classifier, and its recipe has none: add classifier='logistic' "
                          f"(--classifier logistic)")
    return recipe


def classifier_tag(recipe: Recipe) -> str:
    """How result files name ``recipe``'s test-time classifier: ``""`` (none),
    ``"logistic"``, or ``"logistic-penalty0.001"`` for a penalty other than the default."""
    if recipe.classifier is None:
        return ""
    default = Recipe.model_fields["classifier_penalty"].default
    if recipe.classifier_penalty == default:
        return recipe.classifier
    return f"{recipe.classifier}-penalty{recipe.classifier_penalty:g}"


def split_sampler(recipe: Recipe, split: Split, dataset: Any = None,
                  shots: int | None = None) -> EpisodeSampler:
    """The fixed-episode sampler of ``split`` for ``recipe``: its evaluation ways, shots and
    queries (``shots`` overrides), seeded ``recipe.seed + SPLIT_SEED_OFFSET[split]``.
    ``dataset``: the split's data when already loaded (default: :func:`load_split`)."""
    from metafit.data.within import sampler_options

    data = load_split(recipe, split) if dataset is None else dataset
    data, groups, slots = sampler_options(recipe.episode_scheme, data, train=False)
    return EpisodeSampler(data, recipe.eval_ways, recipe.eval_shots if shots is None else shots,
                          recipe.eval_queries, seed=recipe.seed + SPLIT_SEED_OFFSET[split],
                          groups=groups, slots=slots)


def record_evaluation(run: str | Path, result: Result, recipe: Recipe, split: str,
                      which: str) -> Result:
    """Tag ``result`` (episodes, or meta-RL tasks) with where it comes from and save it as
    ``run/report/eval_{split}_{which}_{steps}steps.json`` (``..._{tag}.json`` for a
    recipe with a test-time classifier, :func:`classifier_tag`; ``..._transductive.json``
    for query-batch BatchNorm statistics, the other setting of a model with BatchNorm
    having the plain name); returns it."""
    result.extra.update(run=str(run), split=split, checkpoint=which,
                        algorithm=recipe.algorithm)
    suffix = ""
    if recipe.classifier is not None:
        result.extra.update(classifier=recipe.classifier,
                            classifier_penalty=recipe.classifier_penalty)
        suffix = f"_{classifier_tag(recipe)}"
    if getattr(result, "batch_norm", "none") == "batch":
        suffix += "_transductive"
    if getattr(recipe, "episode_scheme", "random") != "random":
        result.extra.update(episode_scheme=recipe.episode_scheme)
        suffix += f"_{recipe.episode_scheme}"
    atomic_write_text(RunDir(run).report / f"eval_{split}_{which}_{result.steps}steps"
                      f"{suffix}.json", json.dumps(result.to_dict(), indent=1))
    return result


def evaluate_run(
    run: str | Path,
    split: Split = "test",
    episodes: int | None = None,
    which: str = "best",
    steps: int | None = None,
    dist: DistContext = SINGLE,
    curve: Literal["full", "ends"] = "full",
    cache_features: bool = True,
    classifier: str | None = None,
    penalty: float | None = None,
    progress: bool = False,
    batch_norm: BatchNormSetting = "support",
    episode_scheme: str | None = None,
) -> EvalResult:
    """Evaluate a run on fixed episodes of ``split`` and save the result under report/.

    ``batch_norm``: ``"support"`` (default) scores each query as the model that ``metafit
    adapt`` deploys does (the support set's BatchNorm statistics; the figure a user gets);
    ``"batch"`` scores each query set as one batch with its own statistics (transductive,
    the MAML paper's protocol, what validation during training reports). See
    :func:`~metafit.evaluation.protocol.evaluate`; models without BatchNorm: the same.

    ``dist``: in a distributed run the episodes are split across the ranks and gathered
    (:func:`~metafit.evaluation.protocol.evaluate`); every rank returns the result, rank 0 saves it.
    ``curve="ends"`` scores the query set only before adaptation and after the last step
    (the same result, less work; the saved curve has those two points).
    ``cache_features``: as in :func:`~metafit.evaluation.protocol.evaluate`.
    ``classifier``, ``penalty``: as in :func:`load_trained` (the saved result's name then
    ends in the classifier and a penalty other than the default).
    ``episode_scheme``: None for the recipe's, or ``"within_alphabet"`` / ``"random"``
    to score the run on those episodes (:mod:`metafit.data.within`; the saved result's
    name then ends in the scheme when it is not ``random``).
    ``episodes``: None for the recipe's ``test_episodes``; ``steps``: None for the
    algorithm's evaluation steps (0: score before any adaptation). ``progress``: a progress
    bar (episodes) on stderr.

    Raises:
        ValueError: ``episodes`` not a positive integer or ``steps`` a negative one, before
            any work; and the errors of :func:`load_trained`.
    """
    check_count("episodes", episodes, default="the recipe's test_episodes")
    check_count("steps", steps, minimum=0, default="the recipe's evaluation steps")
    recipe, algo = load_trained(run, which, classifier=classifier, penalty=penalty)
    if episode_scheme is not None and episode_scheme != recipe.episode_scheme:
        recipe = make_recipe({**recipe.model_dump(), "episode_scheme": episode_scheme},
                             f"{run} with episode_scheme={episode_scheme!r}")
    n_steps = int(cast(Any, algo).default_eval_steps) if steps is None else int(steps)
    result = evaluate(algo, split_sampler(recipe, split),
                      episodes=recipe.test_episodes if episodes is None else episodes,
                      steps=n_steps, dist=dist,
                      points=None if curve == "full" else [0, n_steps],
                      cache_features=cache_features, progress=progress,
                      batch_norm=batch_norm)
    if not dist.is_main:
        return result
    return record_evaluation(run, result, recipe, split, which)
