"""Which trained runs merge into their ensemble (``metafit ensemble``,
:mod:`metafit.runs.ensemble`): the recipe-level rules, shared by the merge and by the
``members: K`` candidates of ``_recommended.yaml`` (:mod:`metafit.config.recommend`), which
are checked when the file is read rather than after K trainings."""

from __future__ import annotations

from metafit.config.schema import Recipe

__all__ = ["INPUT_KEYS", "MAX_MEMBERS", "MUST_AGREE", "NETWORK_KEYS", "merge_problem"]

#: The most members one merge takes (each adds a member's cost to every prediction).
MAX_MEMBERS = 16
#: The recipe keys that decide which examples a split holds and how they are decoded.
INPUT_KEYS = ("dataset", "image_size", "channels", "image_crop", "rotations", "split_scheme",
              "split_seed", "split_classes", "class_split", "holdout_fraction",
              "train_on_val")
#: The recipe keys that decide the network and how it scores.
NETWORK_KEYS = ("model", "hidden", "depth", "strided", "conv_groups", "algorithm", "distance",
                "classifier", "test_ways", "test_shots")
#: What every member of one merge must share (the rest of the merged recipe is the first
#: member's: its seed, its training schedule).
MUST_AGREE = INPUT_KEYS + NETWORK_KEYS


def merge_problem(recipe: Recipe) -> str | None:
    """Why a run of ``recipe`` cannot be a member (``None``: it can): only conv4
    ProtoNets with the squared Euclidean distance and no test-time classifier merge
    exactly (their logits are minus squared distances, which add up over concatenated
    features; a fitted classifier or a cosine would not)."""
    if (recipe.model, recipe.algorithm, recipe.distance) != ("conv4", "protonet",
                                                             "sqeuclidean"):
        return (f"model '{recipe.model}', algorithm '{recipe.algorithm}', distance "
                f"'{recipe.distance}'; only conv4 ProtoNets with the squared Euclidean "
                "distance merge into their ensemble")
    if recipe.classifier is not None:
        return (f"test-time classifier '{recipe.classifier}': a classifier fitted on the "
                "merged features is not the members' mean; merge runs without one")
    return None
