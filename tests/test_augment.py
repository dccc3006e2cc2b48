"""Random affine augmentation of meta-training episodes (Koch et al. 2015's distortions):
exact on known maps, seeded, resumable with the sampler, training episodes only."""

from __future__ import annotations

import math

import pytest
import torch

from metafit.config.recipe import make_recipe
from metafit.data.augment import RandomAffine
from metafit.data.base import TensorClassDataset
from metafit.data.sampler import EpisodeSampler
from metafit.data.transforms import training_transform


class Fixed(RandomAffine):
    """A RandomAffine whose every map is the given ``[2, 3]`` matrix."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        object.__setattr__(self, "matrix", matrix)

    def matrices(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.matrix.expand(n, 2, 3)  # type: ignore[attr-defined, no-any-return]


def images(n: int = 6, side: int = 9) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(0))


def test_known_maps_resample_exactly() -> None:
    x = images()
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(Fixed(identity).images(x, torch.Generator()), x)
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # input = A @ output
    torch.testing.assert_close(Fixed(quarter).images(x, torch.Generator()),
                               torch.rot90(x, 1, dims=(2, 3)), atol=1e-6, rtol=0)
    shift = torch.tensor([[1.0, 0.0, 2.0 / 9], [0.0, 1.0, 0.0]])  # one pixel of nine
    moved = Fixed(shift).images(x, torch.Generator())
    torch.testing.assert_close(moved[..., :-1], x[..., 1:], atol=1e-6, rtol=0)
    assert bool((moved[..., -1] == 0).all())  # the background comes in as 0


def test_maps_stay_within_their_ranges() -> None:
    aug = RandomAffine(degrees=10.0, shear=0.0, scale=(1.0, 1.0), translate=0.0)
    m = aug.matrices(2000, torch.Generator().manual_seed(1))  # [n, 2, 3]
    a = m[:, :, :2]
    torch.testing.assert_close(a @ a.transpose(1, 2), torch.eye(2).expand(2000, 2, 2),
                               atol=1e-6, rtol=0)  # pure rotations
    angles = torch.atan2(a[:, 1, 0], a[:, 0, 0]).abs()
    assert float(angles.max()) <= math.radians(10.0) + 1e-6
    assert float(angles.max()) > math.radians(9.0)  # the range is used, not a corner of it
    zoom = RandomAffine(degrees=0.0, shear=0.0, scale=(0.8, 1.25), translate=0.0)
    diag = torch.diagonal(zoom.matrices(2000, torch.Generator().manual_seed(2))[:, :, :2],
                          dim1=1, dim2=2)  # [n, 2] = 1 / scale
    assert 0.8 - 1e-6 <= float((1 / diag).min()) and float((1 / diag).max()) <= 1.25 + 1e-6
    none = RandomAffine(strength=0.0).matrices(5, torch.Generator().manual_seed(3))
    torch.testing.assert_close(none, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(5, 2, 3))


def dataset() -> TensorClassDataset:
    x = torch.zeros(40, 1, 12, 12)
    x[:, :, 4:8, 3:9] = torch.linspace(0.2, 1.0, 40).view(40, 1, 1, 1)  # a bar per image
    return TensorClassDataset(x, torch.arange(40) % 8, [f"c{i}" for i in range(8)])


def test_sampler_augments_training_episodes_only_and_resumes_exactly() -> None:
    plain = EpisodeSampler(dataset(), ways=3, shots=2, queries=2, seed=5)
    sampler = EpisodeSampler(dataset(), ways=3, shots=2, queries=2, seed=5,
                             transform=RandomAffine())
    a, b = plain.sample(4), sampler.sample(4)
    assert torch.equal(a.support_y, b.support_y) and torch.equal(a.classes, b.classes)
    assert not torch.allclose(a.support_x, b.support_x)
    assert not torch.allclose(a.query_x, b.query_x)
    diffs = (b.support_x - a.support_x).flatten(2).abs().sum(-1)  # [T, N*K]: one map each
    assert len(torch.unique(diffs.round(decimals=4))) == diffs.numel()
    assert torch.equal(plain.fixed(3).support_x, sampler.fixed(3).support_x)  # never augmented
    state = sampler.state_dict()
    expected = sampler.sample(4)
    resumed = EpisodeSampler(dataset(), ways=3, shots=2, queries=2, seed=5,
                             transform=RandomAffine())
    resumed.load_state_dict(state)
    again = resumed.sample(4)
    assert torch.equal(again.support_x, expected.support_x)
    assert torch.equal(again.query_x, expected.query_x)


def test_recipe_key() -> None:
    recipe = make_recipe({"dataset": "glyphs", "augment": "affine", "augment_strength": 0.5})
    transform = training_transform(recipe)
    assert isinstance(transform, RandomAffine) and transform.strength == 0.5
    assert training_transform(make_recipe({"dataset": "glyphs"})) is None
    with pytest.raises(ValueError, match="augment 'affine' is for image datasets"):
        make_recipe({"dataset": "sinusoid", "model": "mlp", "augment": "affine"})
    with pytest.raises(ValueError, match="float images"):
        RandomAffine().images(torch.zeros(3, 5, dtype=torch.long), torch.Generator())
