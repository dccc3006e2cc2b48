"""Build the model and the algorithm a recipe describes."""

from __future__ import annotations

from torch import nn

from metafit.config.recipe import Recipe
from metafit.models import conv4, mlp, resnet12, resnet18

__all__ = ["build_model", "build_algorithm", "FIXED_HEAD_FREE"]

# Algorithms whose test-time number of ways may differ from the training one: ProtoNet
# needs no head and FineTune and the linear probe fit a new head at test time.
FIXED_HEAD_FREE = frozenset({"protonet", "finetune", "linear_probe"})


def build_model(recipe: Recipe) -> nn.Module:
    """The recipe's backbone with a ``ways``-output head (1 output for regression)."""
    out = 1 if recipe.is_regression else recipe.ways
    if recipe.model == "mlp":
        in_features = 1 if recipe.is_regression else recipe.channels * recipe.image_size**2
        return mlp(in_features=in_features, out_features=out, hidden=recipe.hidden,
                   depth=recipe.depth)
    if recipe.model == "conv4":
        return conv4(out_features=out, in_channels=recipe.channels, hidden=recipe.hidden,
                     image_size=recipe.image_size, depth=recipe.depth, strided=recipe.strided)
    if recipe.model == "resnet12":
        return resnet12(out_features=out, in_channels=recipe.channels,
                        image_size=recipe.image_size)
    if recipe.model == "text":
        from metafit.models.text import text_model

        return text_model(out, recipe.text_model, pooling=recipe.pooling, adapt=recipe.adapt,
                          adapt_layers=recipe.adapt_layers, lora_r=recipe.lora_r,
                          lora_alpha=recipe.lora_alpha, dropout=recipe.text_dropout)
    if recipe.model == "resnet18":
        return resnet18(out_features=out, in_channels=recipe.channels,
                        image_size=recipe.image_size, width=recipe.hidden)
    raise ValueError(f"unknown model '{recipe.model}'")


#: Algorithms that take ``classifier`` (a head fitted at test time on frozen features).
CLASSIFIER_ALGORITHMS = ("protonet", "finetune", "linear_probe")

#: Algorithms that take ``batching`` (the MAML family).
BATCHING_ALGORITHMS = ("maml", "fomaml", "metasgd", "anil")


def build_algorithm(recipe: Recipe, num_train_classes: int | None = None) -> nn.Module:
    """The recipe's algorithm around a freshly initialised model (seeded by ``recipe.seed``).

    Raises:
        ValueError: a test-time ``test_ways`` different from ``ways`` for an algorithm
            whose head is fixed by meta-training.
    """
    import torch

    from metafit.algorithms import build_algorithm as build_registered

    if recipe.eval_ways != recipe.ways and recipe.algorithm not in FIXED_HEAD_FREE:
        raise ValueError(
            f"algorithm '{recipe.algorithm}' meta-trains a {recipe.ways}-way head, so test_ways "
            f"must equal ways (got test_ways={recipe.eval_ways}); only "
            f"{', '.join(sorted(FIXED_HEAD_FREE))} can change the number of ways"
        )
    if recipe.algorithm == "protonet" and recipe.adapt == "head":
        raise ValueError("protonet uses no head, so adapt='head' leaves it nothing to "
                         "meta-train; use adapt lora, top or full (or algorithm "
                         "linear_probe for a frozen encoder)")
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    # Options every algorithm may ignore, then those only some accept (passed when set,
    # so that the registry names an algorithm that does not support them).
    options: dict[str, object] = dict(
        inner_lr=recipe.inner_lr,
        inner_steps=recipe.inner_steps,
        eval_inner_steps=recipe.eval_inner_steps,
        first_order=recipe.first_order,
        num_classes=num_train_classes,
    )
    if recipe.lslr:
        options["lslr"] = True
    if recipe.finetune_layers:
        options["finetune_layers"] = recipe.finetune_layers
    if recipe.inner_batch is not None:
        options["inner_batch"] = recipe.inner_batch
    if recipe.distance != "sqeuclidean":
        if recipe.algorithm != "protonet":
            raise ValueError(f"distance={recipe.distance!r} applies to protonet; algorithm "
                             f"'{recipe.algorithm}' has no prototypes")
        options.update(distance=recipe.distance, scale=recipe.distance_scale)
    if recipe.classifier is not None:
        if recipe.algorithm not in CLASSIFIER_ALGORITHMS:
            raise ValueError(f"classifier={recipe.classifier!r} applies to "
                             f"{', '.join(CLASSIFIER_ALGORITHMS)}; algorithm "
                             f"'{recipe.algorithm}' classifies with the head its inner "
                             "loop adapts")
        options.update(classifier=recipe.classifier, penalty=recipe.classifier_penalty)
    if recipe.batching != "auto":
        if recipe.algorithm not in BATCHING_ALGORITHMS:
            raise ValueError(f"batching={recipe.batching!r} applies to "
                             f"{', '.join(BATCHING_ALGORITHMS)}; algorithm "
                             f"'{recipe.algorithm}' chooses its own path (leave batching auto)")
        options["batching"] = recipe.batching
    algo = build_registered(recipe.algorithm, model, **options)
    algo.task_workers = recipe.task_workers
    algo.vmap_chunk = recipe.vmap_chunk
    return algo
