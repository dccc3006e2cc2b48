"""``conv_groups``: a conv4 of K channel groups is K conv4 networks side by side, and
trained conv4 ProtoNets merge into one that scores as their ensemble
(:mod:`metafit.models.ensemble`)."""

from __future__ import annotations

import pytest
import torch

from metafit.algorithms.protonet import prototype_logits
from metafit.config.recipe import make_recipe
from metafit.models.conv4 import conv4
from metafit.models.ensemble import merge_conv4_states, merge_head_states


def members(k: int, strided: bool, size: int, out: int | None = None) -> list:
    torch.manual_seed(k + 10 * strided + size)
    nets = [conv4(out, 1, 8, size, 4, strided) for _ in range(k)]
    for net in nets:  # away from the initialisation, BatchNorm's affine parameters too
        for p in net.parameters():
            torch.nn.init.normal_(p, 0.0, 0.3)
    return nets


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("size", [28, 40])
def test_merged_features_are_the_members_concatenated(strided: bool, size: int) -> None:
    nets = members(3, strided, size)
    merged = conv4(None, 1, 24, size, 4, strided, groups=3)
    merged.body.load_state_dict(merge_conv4_states([n.body.state_dict() for n in nets], 4))
    x = torch.randn(12, 1, size, size)
    expected = torch.cat([n.body(x) for n in nets], 1) / 3 ** 0.5  # [12, 3F]
    torch.testing.assert_close(merged.body(x), expected, rtol=1e-5, atol=1e-5)
    # later blocks see only their own group: 1/K of the plain wide network's kernels
    assert merged.body[1][0].weight.shape == (24, 8, 3, 3)


def test_merged_protonet_logits_are_the_members_mean() -> None:
    nets = members(2, False, 28)
    merged = conv4(None, 1, 16, 28, 4, groups=2)
    merged.body.load_state_dict(merge_conv4_states([n.body.state_dict() for n in nets], 4))
    support, query = torch.randn(5, 1, 28, 28), torch.randn(7, 1, 28, 28)

    def logits(body: torch.nn.Module) -> torch.Tensor:
        f = body(torch.cat([support, query]))  # per-channel batch statistics, alike
        return prototype_logits(f[5:], f[:5])  # [7, 5]

    mean = torch.stack([logits(n.body) for n in nets]).mean(0)
    torch.testing.assert_close(logits(merged.body), mean, rtol=1e-4, atol=1e-4)


def test_merged_head_gives_the_mean_of_the_members_logits() -> None:
    nets = members(2, False, 28, out=6)
    merged = conv4(6, 1, 16, 28, 4, groups=2)
    states = [n.state_dict() for n in nets]
    merged.load_state_dict({**merge_conv4_states(states, 4, "body."),
                            **merge_head_states(states)})
    x = torch.randn(9, 1, 28, 28)
    mean = torch.stack([n(x) for n in nets]).mean(0)  # [9, 6]
    torch.testing.assert_close(merged(x), mean, rtol=1e-4, atol=1e-4)


def test_what_cannot_merge_is_refused() -> None:
    a, b = members(2, False, 28)
    wide = conv4(None, 1, 16, 28, 4)
    with pytest.raises(ValueError, match="at least two"):
        merge_conv4_states([a.body.state_dict()], 4)
    with pytest.raises(ValueError, match="shapes differ"):
        merge_conv4_states([a.body.state_dict(), wide.body.state_dict()], 4)
    with pytest.raises(ValueError, match="depth 5"):
        merge_conv4_states([a.body.state_dict(), b.body.state_dict()], 5)
    with pytest.raises(ValueError, match="groups must divide"):
        conv4(None, 1, 10, 28, 4, groups=3)
    with pytest.raises(ValueError, match="conv_groups=2 is for model 'conv4'"):
        make_recipe({"model": "resnet12", "conv_groups": 2}, "t")
    with pytest.raises(ValueError, match="hidden a multiple"):
        make_recipe({"hidden": 63, "conv_groups": 2}, "t")
