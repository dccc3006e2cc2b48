"""What each verb prints with ``--json``: one pydantic model per verb, the documented schema
of its output (``docs/cli-json.md`` is generated from them, and a test keeps it equal).

A verb builds its model and :func:`emit` prints it as one line of strict JSON on standard
output (a NaN or infinite number, e.g. the CI of a single episode, is written as ``null``);
logs and progress bars go to standard error, so ``metafit VERB ... --json | jq`` works.
The models forbid unknown keys: a field added to a verb's output is added here first, and
the test table in ``tests/test_cli_json.py`` validates every verb's real output against
its model.

``serve`` has no ``--json``: it runs until stopped, and its output is the HTTP API (its
OpenAPI schema at ``/openapi.json``).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

__all__ = ["SCHEMAS", "emit", "schemas_markdown"]


#: A number that is ``null`` in the JSON where it is NaN or infinite.
Real = float | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null", populate_by_name=True)


class _Scores(_Strict):
    """What every evaluation on fixed tasks reports."""

    metric: str = Field(description="accuracy (classification), mse (regression) or "
                        "return (meta-RL)")
    mean: Real = Field(description="mean of the metric over the episodes")
    ci95: Real = Field(description="half-width of its 95% confidence interval (NaN for "
                        "one episode)")
    episodes: int
    steps: int = Field(description="inner steps at test time")
    per_episode: list[Real] = Field(description="the metric of each episode")
    curve: list[Real] = Field(description="mean metric after each of curve_steps")
    curve_ci95: list[Real]


class Evaluation(_Scores):
    """An evaluation on fixed episodes (:class:`metafit.evaluation.protocol.EvalResult`)."""

    ways: int
    shots: int
    queries: int = Field(description="queries per class")
    transductive: bool = Field(description="BatchNorm with the query set's statistics "
                               "(batch_norm == 'batch')")
    curve_steps: list[int] = Field(description="the inner step of each curve point")
    extra: dict[str, Any] = Field(description="method-specific figures")
    batch_norm: Literal["support", "batch", "none"] = Field(
        description="the queries' BatchNorm statistics: support (each "
        "query with its support set's, as a deployed model predicts), batch (the query "
        "set's, transductive) or none (the model has no BatchNorm)")


class QuickstartRow(Evaluation):
    method: str = Field(description="maml, protonet, finetune or scratch")
    task: str = Field(description="e.g. '5-way 1-shot'")


class QuickstartJson(_Strict):
    """``metafit quickstart --json``."""

    out: str = Field(description="the output directory")
    size: Literal["default", "tiny"]
    dataset: str
    rows: list[QuickstartRow] = Field(description="every method on every task")
    train_seconds: dict[str, Real] = Field(description="meta-training seconds per method")
    total_seconds: Real
    plots: list[str] = Field(description="PNG files in OUT/report")
    maml_test_steps: dict[str, int] = Field(description="MAML's test-time inner steps per "
                                            "shot count, chosen on validation episodes")
    report: str = Field(description="path of results.md")


class RecipeEntry(_Strict):
    name: str
    description: str


class RecipesListJson(_Strict):
    action: Literal["list"]
    recipes: list[RecipeEntry]


class RecipeShowJson(_Strict):
    action: Literal["show"]
    name: str
    recipe: dict[str, Any] = Field(description="every key of the resolved recipe that "
                                   "applies to its dataset")


class RecipeKey(_Strict):
    key: str
    type: str
    default: str
    description: str
    recipes: str = Field(description="the recipes that may set it: all, supervised, "
                         "meta-RL, or one task family (rl_bandit, rl_tabular, "
                         "rl_pendulum)")


class RecipeKeysJson(_Strict):
    action: Literal["keys"]
    keys: list[RecipeKey]


class RecipeRecommendation(_Strict):
    task: str = Field(description="the kind of task (characters, ...)")
    description: str
    recommended: str = Field(description="the recommended candidate")
    commands: list[str] = Field(description="its shell commands, in order, at "
                                "budget_minutes: `metafit train` per stage; for an ensemble "
                                "candidate its members' trainings ending in ` &` (side by "
                                "side), each wave of them followed by `wait`, then "
                                "`metafit ensemble`")
    evidence: str = Field(description="the measurement behind the choice")
    budget_minutes: Real | None = Field(description="the training budget it was measured at")
    candidates: dict[str, list[str]] = Field(description="every candidate's commands "
                                             "(without a budget)")


class RecipeRecommendJson(_Strict):
    action: Literal["recommend"]
    recommendations: list[RecipeRecommendation]


class RecipesJson(RootModel[Annotated[RecipesListJson | RecipeShowJson | RecipeKeysJson
                                      | RecipeRecommendJson,
                                      Field(discriminator="action")]]):
    """``metafit recipes [list|show NAME|keys|recommend [TASK]] --json``: one of four
    objects, told apart by ``action``."""


class SplitInfo(_Strict):
    split: Literal["train", "val", "test"]
    kind: Literal["classes", "task_family"]
    classes: int | None = Field(description="number of classes (None: a task family)")
    examples: int | None
    min_per_class: int | None
    max_per_class: int | None
    family: str | None = Field(description="the task family's class (generated tasks)")


class DataJson(_Strict):
    """``metafit data RECIPE --json``."""

    recipe: str
    dataset: str
    data_root: str | None
    splits: list[SplitInfo]
    warnings: list[str] = Field(description="what keeps a split from giving the recipe's "
                                "tasks: fewer classes than ways, classes with fewer examples "
                                "than shots + queries (never drawn)")


class TrainJson(_Strict):
    """``metafit train RECIPE --json``."""

    run: str = Field(description="the run directory")
    recipe: str
    algorithm: str
    status: str = Field(description="complete, stopped_early, ... (status.json)")
    iteration: int = Field(description="meta-training iterations done")
    metric: str = Field(description="the validation metric")
    best_score: Real = Field(description="best validation score (None: none "
                                     "scored)")
    best_iteration: int | None
    world_size: int = Field(description="processes that trained (torchrun)")


class EnsembleJson(_Strict):
    """``metafit ensemble RUN RUN ... --out DIR --json``."""

    run: str = Field(description="the merged run directory, absolute")
    members: list[str] = Field(description="the member runs, absolute paths, in order")
    checkpoint: str = Field(description="the members' checkpoint merged (best or last)")
    hidden: int = Field(description="filters per block of the merged conv4 (the members' "
                        "sum)")
    conv_groups: int = Field(description="its independent channel groups")


class EpisodesJson(Evaluation):
    """``metafit evaluate RUN`` on the benchmark's fixed episodes."""

    protocol: Literal["episodes"]
    run: str
    split: Literal["train", "val", "test"]
    checkpoint: Literal["best", "last"]
    other_setting: Evaluation | None = Field(
        default=None, description="with --batch-norm both (and a model with BatchNorm): "
        "the same episodes with the transductive setting (batch_norm 'batch'); the "
        "object itself is the deployed setting")


class RLEpisodesJson(_Scores):
    """``metafit evaluate RUN`` of a meta-RL run on fixed held-out tasks
    (:class:`metafit.evaluation.rl.RLEvalResult`): an episode is one task, adapted from
    its own sampled trajectories; the metric is the mean undiscounted return."""

    curve_steps: list[int] = Field(description="the adaptation step of each curve point")
    trajectories: int = Field(description="trajectories sampled per task and step")
    horizon: int = Field(description="steps per trajectory")
    family: str = Field(description="the task family (the recipe's dataset)")
    extra: dict[str, Any] = Field(description="where the result comes from")
    protocol: Literal["rl"]
    run: str
    split: Literal["train", "val", "test"]
    checkpoint: Literal["best", "last"]


class ClassScoreJson(_Strict):
    name: str
    precision: Real
    recall: Real
    f1: Real
    support: int = Field(description="test examples of the class")
    predicted: int = Field(description="times the class was predicted")


class ReliabilityJson(_Strict):
    low: Real
    high: Real
    count: int
    confidence: Real = Field(description="mean top probability in the bin (null: empty)")
    accuracy: Real


class OpenSetJson(_Strict):
    """Test rows whose label is no class of the model, taken as out-of-scope because the
    model has a reject setting (:class:`metafit.evaluation.openset.OpenSetReport`); every
    rate has a Wilson 95% interval (``_low``, ``_high``)."""

    score: str = Field(description="the model's reject score")
    in_scope: int = Field(description="test rows of the model's classes")
    out_of_scope: int = Field(description="test rows of other labels")
    threshold: Real = Field(description="the model's threshold (null: none fitted)")
    in_scope_recall: Real = Field(description="in-scope rows accepted at the threshold")
    in_scope_recall_low: Real
    in_scope_recall_high: Real
    accepted_accuracy: Real = Field(description="in-scope rows accepted with their true "
                                    "label")
    accepted_accuracy_low: Real
    accepted_accuracy_high: Real
    out_of_scope_recall: Real = Field(description="out-of-scope rows rejected at the "
                                      "threshold")
    out_of_scope_recall_low: Real
    out_of_scope_recall_high: Real
    auroc: Real = Field(description="in-scope vs out-of-scope scores (1: perfectly apart)")
    recall: Real = Field(description="the in-scope recall of false_accepts (0.95)")
    false_accepts: Real = Field(description="out-of-scope rows accepted at the threshold "
                                "keeping `recall` of the in-scope rows (set on this test "
                                "set)")
    false_accepts_low: Real
    false_accepts_high: Real


class TestSetJson(_Strict):
    """``metafit evaluate MODEL_DIR --test T`` (or ``RUN --support S --test T``): the
    user's own labelled test set (:mod:`metafit.evaluation.classification`)."""

    protocol: Literal["test_set"]
    model: str = Field(description="the model directory, or the run adapted on --support")
    test: str = Field(description="the test set's path")
    examples: int
    accuracy: Real = Field(description="of the most probable class over the in-scope rows "
                           "(with a reject setting, open_set.accepted_accuracy counts "
                           "rejected rows as wrong, as predict answers)")
    accuracy_low: Real = Field(description="Wilson 95% interval, low end")
    accuracy_high: Real
    macro_f1: Real
    ece: Real = Field(description="expected calibration error (15 equal-width bins)")
    classes: list[str]
    per_class: list[ClassScoreJson]
    confusion: list[list[int]] = Field(description="rows: true class, columns: predicted")
    confused_pairs: list[dict[str, Any]] = Field(description="{true, predicted, count}, "
                                                 "most frequent first")
    reliability: list[ReliabilityJson]
    extra: dict[str, Any]
    open_set: OpenSetJson | None = Field(default=None, description="with out-of-scope test "
                                         "rows and a model with a reject setting; the "
                                         "other figures cover the in-scope rows only")
    files: list[str] = Field(description="with --out: the files written")


class VersionScoreJson(_Strict):
    """One version of a model directory scored on the test set."""

    version: int
    current: bool = Field(description="whether it is the version the model serves")
    classes: list[str]
    support_size: int | None = Field(description="examples it was adapted on")
    examples: int = Field(description="test rows")
    known: int = Field(description="test rows of classes this version predicts")
    accuracy: Real = Field(description="over every test row; rows of classes the version "
                           "lacks count as errors")
    accuracy_low: Real = Field(description="Wilson 95% interval, low end")
    accuracy_high: Real
    known_accuracy: Real = Field(description="over the rows of its own classes")
    macro_f1: Real = Field(description="over the rows of its own classes")
    ece: Real


class VersionsTestJson(_Strict):
    """``metafit evaluate MODEL_DIR --test T --versions all|N,M``: the model's versions
    on one test set."""

    protocol: Literal["versions"]
    model: str
    test: str
    rows: list[VersionScoreJson] = Field(description="one per version, in the order asked")


class EvaluateJson(RootModel[Annotated[EpisodesJson | TestSetJson | RLEpisodesJson
                                       | VersionsTestJson,
                                       Field(discriminator="protocol")]]):
    """``metafit evaluate ... --json``: fixed episodes of a run (``protocol: episodes``),
    the user's own test set (``protocol: test_set``), fixed tasks of a meta-RL run
    (``protocol: rl``), or versions of a model directory on a test set (``protocol:
    versions``)."""


class ReportJson(_Strict):
    """``metafit report RUN [RUN ...] --json``."""

    out: str = Field(description="the report directory")
    files: list[str] = Field(description="every file written")
    results: dict[str, Evaluation] = Field(description="each run's evaluation, by label")


class TuneJson(_Strict):
    """``metafit tune RECIPE --json``."""

    study: str
    storage: str
    direction: Literal["minimize", "maximize"]
    metric: str = Field(description="the validation score optimised: accuracy, mse, or "
                        "return (meta-RL: after eval_inner_steps adaptation steps)")
    finished: int = Field(description="complete and pruned trials")
    complete: int
    pruned: int
    failed: int
    best_trial: int | None
    best_value: Real
    best_params: dict[str, Any]
    best_recipe: str | None = Field(description="the best trial's recipe (best.yaml)")
    report_files: list[str] = Field(description="with --report: the files written")


class BenchRowJson(_Strict):
    config: dict[str, Any] = Field(description="the benchmark configuration")
    label: str
    seconds: dict[str, Real] = Field(description="median seconds per meta-batch, by "
                                      "implementation")
    agreement: dict[str, Real] = Field(description="largest relative meta-gradient "
                                        "difference of each peer from metafit")
    peak_mib: dict[str, Real]


class BenchJson(_Strict):
    """``metafit bench --json``."""

    torch: str
    threads: int
    rows: list[BenchRowJson]


class RejectJson(_Strict):
    """A model's reject setting (:mod:`metafit.deploy.reject`)."""

    score: str = Field(description="max_prob, max_logit, energy, prototype or nearest")
    threshold: Real = Field(description="inputs scoring below it get `label` (null: none "
                            "fitted, nothing rejected)")
    recall: Real = Field(description="the target in-scope recall it was fitted for (null: "
                         "given)")
    label: str = Field(description="the unknown label")
    fitted: dict[str, Any] = Field(description="how: held-out folds, counts, the held-out "
                                   "recall; or why no threshold was fitted")


class AdaptJson(_Strict):
    """``metafit adapt RUN --support S --out M --json``."""

    out: str
    kind: Literal["image", "text"]
    labels: list[str]
    algorithm: str
    steps: int
    support_size: int
    support_accuracy: Real = Field(description="accuracy on the support set itself")
    temperature: Real = Field(description="probabilities are softmax(logits / temperature); "
                              "1 unless --calibrate")
    reject: RejectJson | None = Field(default=None, description="with --reject: the "
                                      "'none of these' setting stored in model.json")
    mlflow_model: str | None = Field(default=None, description="with --mlflow: the "
                                     "logged model's URI (mlflow.pyfunc.load_model)")
    version: int | None = Field(default=None, description="with --update: the version "
                                "written (now current)")
    parent: int | None = Field(default=None, description="with --update: the version it "
                               "was updated from")


class VersionJson(_Strict):
    version: int
    created: str = Field(description="when it was written (ISO 8601, UTC)")
    classes: list[str]
    support_size: int | None = Field(description="examples it was adapted on")
    parent: int | None = Field(description="the version it was updated from (null: the "
                               "first)")
    added: int | None = Field(description="examples the update added")
    current: bool


class VersionsJson(_Strict):
    """``metafit versions MODEL --json``: every version of an adapted model."""

    model: str
    current: int | None = Field(description="the version that loads")
    versions: list[VersionJson]


class Prediction(_Strict):
    input: str = Field(description="the text, or the image file")
    label: str = Field(description="the most probable label, or the unknown label of a "
                       "rejected input")
    probabilities: dict[str, Real] = Field(description="every label's probability")
    score: Real = Field(default=None, description="the reject score (higher: more like the "
                        "classes; null without a reject setting)")
    rejected: bool | None = Field(default=None, description="whether the score is below "
                                  "the threshold (null without a reject setting)")


class PredictJson(RootModel[list[Prediction]]):
    """``metafit predict MODEL INPUT ... --json``: one object per input, in order."""


class Measure(_Strict):
    bytes: int = Field(description="weights file size")
    gzip_bytes: int
    ms_batch1: Real = Field(description="median latency, one thread, batch 1")
    ms_batch32: Real


class EpisodeAccuracy(_Strict):
    accuracy: Real
    ci95: Real
    delta: Real = Field(description="paired change against the float model")
    delta_ci95: Real


class CompressEpisodes(_Strict):
    run: str
    episodes: int
    float_model: EpisodeAccuracy = Field(alias="float", description="the model as adapted")
    compressed: EpisodeAccuracy


class CompressJson(_Strict):
    """``metafit compress MODEL --out M --json``."""

    out: str
    compression: dict[str, Any] = Field(description="what was done: {quantize: int8 | null, "
                                        "prune: {...} | null}")
    before: Measure
    after: Measure
    sparsity: Real
    support_agreement: Real = Field(description="fraction of support predictions unchanged")
    support_max_prob_change: Real
    test_episodes: CompressEpisodes | None = Field(default=None, description="with --episodes")
    distill: dict[str, Any] | None = Field(default=None, description="with --distill: the "
                                           "student, its training and its agreement with "
                                           "the model on held-out unlabelled inputs")
    vocabulary: dict[str, Any] | None = Field(default=None, description="with "
                                              "--trim-vocabulary: tokens kept of the "
                                              "tokenizer's, parameters before and after, "
                                              "and the share of held-out texts' tokens not "
                                              "kept by the rest (read as [UNK])")


class ClassifierExportJson(_Strict):
    """``metafit export MODEL --json``: the parity check of a classifier."""

    path: str
    max_abs_diff: Real
    max_prob_diff: Real
    tolerance: Real
    batches: list[list[int]]
    opset: int
    export_seconds: Real
    quantized: str | None
    quantized_max_abs_diff: Real
    quantized_max_prob_diff: Real
    max_score_diff: Real = Field(default=None, description="with a reject setting: the "
                                 "largest reject_score difference (gated like the logits)")
    quantized_max_score_diff: Real = Field(default=None, description="with a reject setting "
                                           "and --quantize: the int8 model's (not gated)")


class PolicyExportJson(_Strict):
    """``metafit export RUN --json`` on a meta-RL run: the policy's parity check."""

    path: str
    max_abs_diff: Real = Field(description="largest absolute difference of the action and "
                               "distribution outputs, onnxruntime against PyTorch")
    action_mismatches: int = Field(description="categorical policies: arg-max actions that "
                                   "differ (must be 0)")
    tolerance: Real
    batches: list[list[int]]
    opset: int
    export_seconds: Real


class ExportJson(RootModel[ClassifierExportJson | PolicyExportJson]):
    """``metafit export MODEL|RUN --json``: the parity check of an adapted classifier or
    of a meta-RL run's policy (the fields tell which)."""


#: The output model of each verb with ``--json``, in ``metafit --help``'s order.
SCHEMAS: dict[str, type[BaseModel]] = {
    "quickstart": QuickstartJson, "recipes": RecipesJson, "train": TrainJson,
    "ensemble": EnsembleJson,
    "evaluate": EvaluateJson, "report": ReportJson, "tune": TuneJson, "bench": BenchJson,
    "adapt": AdaptJson, "predict": PredictJson, "versions": VersionsJson,
    "compress": CompressJson,
    "export": ExportJson, "data": DataJson,
}


def emit(verb: str, payload: Any) -> None:
    """Validate ``payload`` against ``verb``'s model and print it as one line of JSON.

    Raises:
        pydantic.ValidationError: ``payload`` does not fit the documented schema (a bug).
    """
    model = SCHEMAS[verb].model_validate(payload)
    sys.stdout.write(model.model_dump_json(by_alias=True) + "\n")


def schemas_markdown() -> str:
    """Each verb's JSON Schema as a Markdown section (``docs/cli-json.md``)."""
    parts = []
    for verb, model in SCHEMAS.items():
        doc = (model.__doc__ or "").strip().splitlines()[0]
        schema = json.dumps(model.model_json_schema(by_alias=True), indent=1,
                            sort_keys=True)
        parts.append(f"## `{verb}`\n\n{doc}\n\n```json\n{schema}\n```\n")
    return "\n".join(parts)


HEADER = """# `--json`: what each verb prints

Every verb that produces a result takes `--json` and then prints exactly one line of
strict JSON on standard output (NaN and infinities are written as `null`); logs and
progress bars stay on standard error, so `metafit evaluate RUN --json | jq .mean` works.
`serve` has none: its output is the HTTP API (`/openapi.json`). The schemas below are
generated from `metafit.cli.results` (`python -m metafit.cli.results > docs/cli-json.md`);
a test validates every verb's real output against them and keeps this page equal to them.

"""

if __name__ == "__main__":  # pragma: no cover - regenerates docs/cli-json.md
    sys.stdout.write(HEADER + schemas_markdown())
