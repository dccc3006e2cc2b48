"""The public API of DESIGN.md section 4 / README.md works as written."""

from __future__ import annotations

import torch

import metafit as mf


def test_design_section_4_example_runs() -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (12 * 20, 1, 28, 28), dtype=torch.uint8, generator=g)
    ds = mf.data.TensorClassDataset(data, torch.arange(12).repeat_interleave(20),
                                    [f"c{i}" for i in range(12)])
    sampler = mf.EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)
    eps = sampler.sample(4)
    assert eps.support_x.shape == (4, 5, 1, 28, 28) and eps.query_y.shape == (4, 75)
    net = mf.models.conv4(out_features=5, in_channels=1, hidden=8)
    algo = mf.MAML(net, inner_lr=0.4, inner_steps=1, first_order=False)
    grads, metrics = algo.meta_gradients(eps)
    assert set(grads) == {n for n, _ in algo.named_parameters()}
    assert {"loss", "accuracy"} <= set(metrics)
    learner = algo.adapt(eps[0].support_x, eps[0].support_y, steps=10)
    assert learner(eps[0].query_x).shape == (75, 5)
    result = mf.evaluate(algo, mf.EpisodeSampler(ds, 5, 1, 15, seed=2), episodes=6)
    assert len(result.per_episode) == 6 and result.ci95 >= 0 and 0 <= result.mean <= 1
    assert mf.load_recipe("omniglot_5w1s_maml").algorithm == "maml"
    assert set(mf.list_algorithms()) == {"maml", "fomaml", "metasgd", "anil", "reptile",
                                         "protonet", "finetune", "linear_probe"}
