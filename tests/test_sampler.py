"""EpisodeSampler: balance, labels, disjoint support/query, determinism, errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from metafit import Episodes, EpisodeSampler
from metafit.data import TensorClassDataset


def index_dataset(num_classes: int = 12, per_class: int = 20, uneven: bool = False):
    """Example i is the float tensor [i], so an episode reveals which examples it drew."""
    counts = [per_class - (c % 4 if uneven else 0) for c in range(num_classes)]
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    data = torch.arange(len(targets), dtype=torch.float64).unsqueeze(1)  # [N, 1]
    return TensorClassDataset(data, targets, [f"c{c}" for c in range(num_classes)])


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 15), (3, 5, 2), (12, 2, 3)])
def test_balance_labels_and_consistency(ways: int, shots: int, queries: int) -> None:
    ds = index_dataset()
    eps = EpisodeSampler(ds, ways, shots, queries, seed=1).sample(50)
    assert eps.support_x.shape == (50, ways * shots, 1)
    assert eps.query_x.shape == (50, ways * queries, 1)
    for t in range(50):
        assert torch.equal(torch.bincount(eps.support_y[t], minlength=ways),
                           torch.full((ways,), shots))
        assert torch.equal(torch.bincount(eps.query_y[t], minlength=ways),
                           torch.full((ways,), queries))
        # every example with label j belongs to dataset class classes[t, j]
        for x, y in ((eps.support_x[t], eps.support_y[t]), (eps.query_x[t], eps.query_y[t])):
            true_class = ds.targets[x.squeeze(1).long()]
            assert torch.equal(true_class, eps.classes[t][y])
        assert len(set(eps.classes[t].tolist())) == ways


def test_support_and_query_are_disjoint_and_no_duplicates() -> None:
    eps = EpisodeSampler(index_dataset(uneven=True), 5, 4, 12, seed=3).sample(100)
    for t in range(100):
        s = set(eps.support_x[t].flatten().tolist())
        q = set(eps.query_x[t].flatten().tolist())
        assert not s & q
        assert len(s) == 20 and len(q) == 60


def test_uneven_classes_only_draw_eligible_classes() -> None:
    ds = index_dataset(uneven=True)  # class sizes 20, 19, 18, 17, ...
    with pytest.warns(UserWarning, match=r"6 of 12 classes have fewer than shots \+ queries "
                      r"= 19 examples and are never sampled: 'c2' \(18\)"):
        sampler = EpisodeSampler(ds, 3, 1, 18, seed=0)
    eps = sampler.sample(200)
    assert set(ds.counts[eps.classes.flatten()].tolist()) <= {20, 19}


def test_labels_are_not_tied_to_classes() -> None:
    eps = EpisodeSampler(index_dataset(num_classes=5), 5, 1, 1, seed=0).sample(200)
    labels_of_class0 = (eps.classes == 0).float().argmax(dim=1)  # [T]
    assert set(labels_of_class0.tolist()) == set(range(5))
    # and the support order is shuffled, not label-sorted, in most tasks
    sorted_tasks = sum(bool(torch.equal(y, torch.arange(5))) for y in eps.support_y)
    assert sorted_tasks < 20


def test_sample_is_reproducible_and_advances() -> None:
    a = EpisodeSampler(index_dataset(), 5, 1, 5, seed=7)
    b = EpisodeSampler(index_dataset(), 5, 1, 5, seed=7)
    first_a, first_b = a.sample(10), b.sample(10)
    assert torch.equal(first_a.support_x, first_b.support_x)
    assert torch.equal(first_a.query_y, first_b.query_y)
    assert not torch.equal(first_a.support_x, a.sample(10).support_x)  # fresh tasks
    other = EpisodeSampler(index_dataset(), 5, 1, 5, seed=8).sample(10)
    assert not torch.equal(first_a.support_x, other.support_x)


def test_state_dict_resumes_the_stream() -> None:
    s = EpisodeSampler(index_dataset(), 5, 1, 5, seed=2)
    s.sample(4)
    state = s.state_dict()
    expected = s.sample(4)
    t = EpisodeSampler(index_dataset(), 5, 1, 5, seed=2)
    t.load_state_dict(state)
    assert torch.equal(t.sample(4).support_x, expected.support_x)


def test_fixed_is_independent_of_sample_calls() -> None:
    s = EpisodeSampler(index_dataset(), 5, 1, 5, seed=4)
    f1 = s.fixed(8)
    s.sample(3)
    t = EpisodeSampler(index_dataset(), 5, 1, 5, seed=4)
    t.sample(11)
    assert torch.equal(f1.query_x, t.fixed(8).query_x)
    other_seed = EpisodeSampler(index_dataset(), 5, 1, 5, seed=5)
    assert not torch.equal(f1.query_x, other_seed.fixed(8).query_x)


def _digest(eps: Episodes) -> str:
    h = hashlib.sha256()
    for tensor in (eps.support_x, eps.support_y, eps.query_x, eps.query_y):
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


FIXED_SCRIPT = """
import hashlib, torch
from metafit import EpisodeSampler
from metafit.data import TensorClassDataset
targets = torch.arange(12).repeat_interleave(20)
ds = TensorClassDataset(torch.arange(240, dtype=torch.float64).unsqueeze(1), targets,
                        [str(c) for c in range(12)])
eps = EpisodeSampler(ds, 5, 1, 5, seed=11).fixed(16)
h = hashlib.sha256()
for t in (eps.support_x, eps.support_y, eps.query_x, eps.query_y):
    h.update(t.numpy().tobytes())
print(h.hexdigest())
"""


def test_fixed_is_identical_across_processes() -> None:
    digests = {
        subprocess.run([sys.executable, "-c", FIXED_SCRIPT], capture_output=True, text=True,
                       check=True).stdout.strip()
        for _ in range(2)
    }
    local = _digest(EpisodeSampler(index_dataset(), 5, 1, 5, seed=11).fixed(16))
    assert digests == {local}


def test_impossible_requests_name_the_numbers() -> None:
    ds = index_dataset(num_classes=4, per_class=6)
    with pytest.raises(ValueError, match=r"ways=5 exceeds the 4 classes"):
        EpisodeSampler(ds, 5, 1, 1)
    with pytest.raises(ValueError, match=r"shots \+ queries = 2 \+ 5 = 7.*smallest class: 6"):
        EpisodeSampler(ds, 2, 2, 5)
    for bad in ({"ways": 0}, {"shots": -1}, {"queries": 0}):
        args = {"ways": 2, "shots": 1, "queries": 1, **bad}
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive integer"):
            EpisodeSampler(ds, **args)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        EpisodeSampler(ds, 2, 1, 1).sample(0)


def test_uint8_images_become_floats_in_unit_range() -> None:
    data = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    ds = TensorClassDataset(data, torch.arange(4).repeat_interleave(10), list("abcd"), invert=True)
    eps = EpisodeSampler(ds, 2, 1, 2, seed=0).sample(3)
    assert eps.support_x.dtype == torch.float32 and eps.support_x.shape == (3, 2, 1, 4, 4)
    assert 0.0 <= float(eps.support_x.min()) and float(eps.support_x.max()) <= 1.0
    # targets are already grouped, so example 0 of class 0 is data[0]; invert=True flips it
    assert torch.allclose(ds.examples(0)[0], 1.0 - data[0].float() / 255.0)


def test_fixed_indices_name_the_examples_of_the_fixed_episodes() -> None:
    ds = index_dataset(uneven=True)
    sampler = EpisodeSampler(ds, 4, 2, 3, seed=5)
    index, episodes = sampler.fixed_indices(6), sampler.fixed(6)
    assert index.support_x.dtype == torch.long and index.query_x.shape == (6, 12)
    assert torch.equal(ds.gather(index.support_x), episodes.support_x)
    assert torch.equal(ds.gather(index.query_x), episodes.query_x)
    for name in ("support_y", "query_y", "classes"):
        assert torch.equal(getattr(index, name), getattr(episodes, name))
    assert torch.equal(sampler.fixed(6).query_x, episodes.query_x)  # the stream is unmoved
