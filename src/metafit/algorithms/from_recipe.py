"""Build the model and the algorithm a recipe describes."""

from __future__ import annotations

from torch import nn

from metafit.algorithms.base import Algorithm
from metafit.algorithms.registry import build_algorithm as build_registered
from metafit.algorithms.registry import get_algorithm, list_algorithms
from metafit.config.recipe import Recipe
from metafit.execution.precision import check_precision
from metafit.execution.settings import Execution
from metafit.models import conv4, mlp, resnet12, resnet18

__all__ = ["build_model", "build_algorithm", "check_recipe_algorithm", "resnet12_widths",
           "with_capability"]


def resnet12_widths(hidden: int) -> tuple[int, int, int, int]:
    """The four block widths of a ResNet-12 whose first block has ``hidden`` filters, in
    the papers' proportions: 64 gives their 64-160-320-640 (Lee et al. 2019)."""
    return hidden, hidden * 5 // 2, hidden * 5, hidden * 10


def with_capability(flag: str, value: object = True) -> list[str]:
    """Registered algorithm names whose class declares ``flag`` = ``value`` (for messages)."""
    return [n for n in list_algorithms() if getattr(get_algorithm(n), flag) == value]


def build_model(recipe: Recipe) -> nn.Module:
    """The recipe's backbone with a ``ways``-output head (1 output for regression)."""
    out = 1 if recipe.is_regression else recipe.ways
    if recipe.model == "mlp":
        in_features = 1 if recipe.is_regression else recipe.channels * recipe.image_size**2
        return mlp(in_features=in_features, out_features=out, hidden=recipe.hidden,
                   depth=recipe.depth)
    if recipe.model == "conv4":
        return conv4(out_features=out, in_channels=recipe.channels, hidden=recipe.hidden,
                     image_size=recipe.image_size, depth=recipe.depth, strided=recipe.strided,
                     groups=recipe.conv_groups)
    if recipe.model == "resnet12":
        return resnet12(out_features=out, in_channels=recipe.channels,
                        image_size=recipe.image_size, widths=resnet12_widths(recipe.hidden))
    if recipe.model == "text":
        from metafit.models.text import text_model

        return text_model(out, recipe.text_model, pooling=recipe.pooling, adapt=recipe.adapt,
                          adapt_layers=recipe.adapt_layers, lora_r=recipe.lora_r,
                          lora_alpha=recipe.lora_alpha, dropout=recipe.text_dropout)
    if recipe.model == "image_encoder":
        from metafit.models.image_encoder import image_encoder_model

        return image_encoder_model(out, recipe.image_model, adapt=recipe.adapt,
                                   adapt_layers=recipe.adapt_layers, lora_r=recipe.lora_r,
                                   lora_alpha=recipe.lora_alpha)
    if recipe.model == "resnet18":
        return resnet18(out_features=out, in_channels=recipe.channels,
                        image_size=recipe.image_size, width=recipe.hidden)
    raise ValueError(f"unknown model '{recipe.model}'")


def build_algorithm(recipe: Recipe, num_train_classes: int | None = None) -> Algorithm:
    """The recipe's algorithm around a freshly initialised model (seeded by ``recipe.seed``),
    running meta-batches as the recipe's ``batching``, ``task_workers``, ``vmap_chunk``
    and ``precision`` say.

    Raises:
        ValueError: the recipe asks what the algorithm's capabilities rule out
            (:func:`check_recipe_algorithm`), or a ``precision`` the device cannot run
            (:func:`~metafit.execution.precision.check_precision`).
    """
    import torch

    cls = check_recipe_algorithm(recipe)
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
    if recipe.learn_scale:
        if recipe.algorithm != "protonet" or recipe.distance != "cosine":
            raise ValueError("learn_scale learns the scale of protonet's cosine distance; "
                             "it needs algorithm protonet and distance cosine (got "
                             f"'{recipe.algorithm}', '{recipe.distance}')")
        options["learn_scale"] = True
    if recipe.classifier is not None:
        if not cls.accepts_classifier:
            raise ValueError(f"classifier={recipe.classifier!r} applies to "
                             f"{', '.join(with_capability('accepts_classifier'))}; algorithm "
                             f"'{recipe.algorithm}' classifies with the head its inner "
                             "loop adapts")
        options.update(classifier=recipe.classifier, penalty=recipe.classifier_penalty)
    check_precision(recipe.precision, recipe.device)
    options["execution"] = Execution(recipe.batching, recipe.task_workers, recipe.vmap_chunk,
                                     recipe.precision)
    return build_registered(recipe.algorithm, model, **options)


def check_recipe_algorithm(recipe: Recipe) -> type[Algorithm]:
    """The recipe's algorithm class, after checking the recipe asks nothing of it that its
    capabilities rule out (``ValueError`` naming the algorithms that would do)."""
    cls = get_algorithm(recipe.algorithm)
    if recipe.eval_ways != recipe.ways and cls.fixed_head:
        free = ", ".join(with_capability("fixed_head", False))
        raise ValueError(
            f"algorithm '{recipe.algorithm}' meta-trains a {recipe.ways}-way head, so test_ways "
            f"must equal ways (got test_ways={recipe.eval_ways}); only {free} can change the "
            "number of ways")
    cls.check_batching(recipe.batching)  # before the model is built
    if recipe.cuda_graphs and not cls.graphable:
        raise ValueError(f"cuda_graphs works with {', '.join(with_capability('graphable'))}, "
                         f"not algorithm '{recipe.algorithm}' (docs/design.md, 'Speed on a "
                         "GPU')")
    if cls.name == "protonet" and recipe.adapt == "head":
        raise ValueError("protonet uses no head, so adapt='head' leaves it nothing to "
                         "meta-train; use adapt lora, top or full (or algorithm "
                         "linear_probe for a frozen encoder)")
    return cls
