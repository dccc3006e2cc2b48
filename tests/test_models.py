"""Contract tests for the backbones (see :mod:`metafit.models.base`).

Every model: ``body`` -> ``[B, F]`` with ``F == model.feature_dim``, a linear head (or the
identity with ``out_features=None``), no buffers (BatchNorm with ``track_running_stats=False``),
the same output under ``torch.func.functional_call``, and a finite, non-zero second-order
meta-gradient through one inner SGD step (MAML, Finn et al. 2017). BatchNorm uses per-task
batch statistics in train *and* eval mode, so an example's output depends on the rest of
its batch; that is the documented choice, tested here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.models.base import FewShotModel
from metafit.models.conv4 import conv4
from metafit.models.mlp import mlp
from metafit.models.resnet12 import resnet12
from metafit.models.resnet18 import resnet18

Factory = Callable[..., FewShotModel]

# name -> (factory, kwargs, input shape of one example, expected feature width, has BN)
CASES: dict[str, tuple[Factory, dict, tuple[int, ...], int, bool]] = {
    "conv4": (conv4, {"in_channels": 1, "hidden": 8, "image_size": 28}, (1, 28, 28), 8, True),
    "conv4_strided": (conv4, {"in_channels": 1, "hidden": 8, "image_size": 28,
                              "strided": True}, (1, 28, 28), 32, True),
    "mlp": (mlp, {"in_features": 6, "hidden": 16}, (6,), 16, False),
    "resnet12": (resnet12, {"in_channels": 3, "image_size": 32, "widths": (8, 8, 16, 16)},
                 (3, 32, 32), 16, True),
    "resnet12_flat": (resnet12, {"in_channels": 3, "image_size": 32, "widths": (8, 8, 16, 16),
                                 "avg_pool": False}, (3, 32, 32), 16 * 2 * 2, True),
    "resnet18": (resnet18, {"in_channels": 3, "image_size": 32, "width": 8}, (3, 32, 32),
                 64, True),
    "resnet18_large": (resnet18, {"in_channels": 3, "image_size": 40, "width": 8},
                       (3, 40, 40), 64, True),
}
NAMES = list(CASES)
BN_NAMES = [n for n in NAMES if CASES[n][4]]
WAYS = 3


def _build(name: str, out_features: int | None = WAYS) -> tuple[FewShotModel, tuple[int, ...]]:
    factory, kwargs, shape, _, _ = CASES[name]
    torch.manual_seed(0)
    return factory(out_features=out_features, **kwargs), shape


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_feature_dim(name: str) -> None:
    model, shape = _build(name)
    x = torch.randn(4, *shape)
    feats = model.body(x)
    assert feats.shape == (4, CASES[name][3])
    assert model.feature_dim == feats.shape[1]
    assert isinstance(model.head, nn.Linear)
    assert model.head.in_features == model.feature_dim
    assert model(x).shape == (4, WAYS)


@pytest.mark.parametrize("name", NAMES)
def test_embedding_net(name: str) -> None:
    model, shape = _build(name, out_features=None)
    assert isinstance(model.head, nn.Identity)
    x = torch.randn(4, *shape)
    out = model(x)
    assert out.shape == (4, model.feature_dim)
    torch.testing.assert_close(out, model.body(x))


@pytest.mark.parametrize("name", NAMES)
def test_no_state_besides_parameters(name: str) -> None:
    model, _ = _build(name)
    assert list(model.buffers()) == []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert not m.track_running_stats
            assert m.running_mean is None and m.running_var is None


@pytest.mark.parametrize("name", NAMES)
def test_functional_call_matches_module(name: str) -> None:
    model, shape = _build(name)
    x = torch.randn(5, *shape)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.testing.assert_close(functional_call(model, params, (x,)), model(x))
    # Changed parameters are used: zeroing the head gives its bias only.
    params["head.weight"] = torch.zeros_like(params["head.weight"])
    out = functional_call(model, params, (x,))
    torch.testing.assert_close(out, params["head.bias"].expand(5, -1))


def _meta_grads(model: FewShotModel, shape: tuple[int, ...],
                first_order: bool) -> list[Tensor]:
    """Outer gradient w.r.t. the initial parameters after one inner SGD step (MAML)."""
    gen = torch.Generator().manual_seed(1)
    xs, xq = torch.randn(6, *shape, generator=gen), torch.randn(6, *shape, generator=gen)
    ys, yq = torch.arange(6) % WAYS, (torch.arange(6) + 1) % WAYS
    params: dict[str, Tensor] = dict(model.named_parameters())
    inner = F.cross_entropy(functional_call(model, params, (xs,)), ys)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=not first_order)
    fast = {k: p - 0.4 * g for (k, p), g in zip(params.items(), grads, strict=True)}
    outer = F.cross_entropy(functional_call(model, fast, (xq,)), yq)
    return list(torch.autograd.grad(outer, list(params.values())))


@pytest.mark.parametrize("name", NAMES)
def test_second_order_gradient(name: str) -> None:
    model, shape = _build(name)
    second = _meta_grads(model, shape, first_order=False)
    assert all(torch.isfinite(g).all() for g in second)
    assert sum(float(g.abs().sum()) for g in second) > 0.0
    # The Hessian-vector term really flows: second-order differs from first-order MAML.
    first = _meta_grads(model, shape, first_order=True)
    diff = sum(float((a - b).abs().sum()) for a, b in zip(second, first, strict=True))
    assert diff > 1e-6


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", BN_NAMES)
def test_batch_statistics_in_train_and_eval(name: str, mode: str) -> None:
    """Per-task batch statistics: example 0's output depends on its batch-mates, in both
    modes (there are no running statistics to fall back on in eval mode)."""
    model, shape = _build(name)
    model.train(mode == "train")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, *shape, generator=gen)
    others = 3.0 * torch.randn(3, *shape, generator=gen) + 1.0
    with torch.no_grad():
        a = model(x)[0]
        b = model(torch.cat([x[:1], others]))[0]
    assert not torch.allclose(a, b, atol=1e-4)


def test_mlp_has_no_batch_dependence() -> None:
    model, shape = _build("mlp")
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:1], model(x[:1]))


def test_resnet12_default_84() -> None:
    """The MetaOptNet configuration: 64-160-320-640, 84x84 -> F = 640."""
    model = resnet12(out_features=5)
    assert model.feature_dim == 640
    assert list(model.buffers()) == []
    n = sum(p.numel() for p in model.parameters())
    assert 12_000_000 < n < 13_000_000  # ~12.4M, as reported for MetaOptNet's ResNet-12


def test_resnet18_default_feature_dim() -> None:
    model = resnet18(out_features=5, image_size=84, width=64)
    assert model.feature_dim == 512
    n = sum(p.numel() for p in model.body.parameters())
    assert n == 11_176_512  # torchvision resnet18 without fc: 11,689,512 - 513,000


@pytest.mark.parametrize("bad", [{"widths": (8, 8, 8)}, {"image_size": 8}, {"drop_rate": 1.0}])
def test_resnet12_rejects_bad_args(bad: dict) -> None:
    with pytest.raises(ValueError):
        resnet12(**bad)


def test_resnet12_dropout_only_in_train() -> None:
    torch.manual_seed(0)
    model = resnet12(out_features=WAYS, image_size=32, widths=(8, 8, 16, 16), drop_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))
