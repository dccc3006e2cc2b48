"""Stochastic MLP policies, used functionally with one parameter set per task.

A :class:`Policy` is an ``nn.Module`` whose ``forward`` maps observations ``[..., obs]`` to
the parameters of the action distribution ``[..., D]`` (one tensor, so it vmaps, detaches
and compares simply); its methods read that tensor (``log_prob``, ``sample``, ``kl``,
``entropy``, ``mode``). As in :mod:`metafit.functional`, the module is only ever called
through :func:`torch.func.functional_call` with a parameter dict: :func:`policy_output`
runs T tasks' parameter sets ``[T, *param]`` on observations ``[..., T, B, obs]`` in one
vectorised call (``vmap`` over the task axis: batched matmuls), so a rollout step of the
whole meta-batch is one forward.

* :class:`GaussianMLPPolicy`: mean from an MLP, state-independent log standard deviation
  (the policy of Finn et al. 2017, sec. 5.3, and of pytorch-maml-rl: tanh MLP 64-64, std
  initialised to 1). Log-std is clamped below at ``log(min_std)``.
* :class:`CategoricalMLPPolicy`: logits from an MLP (bandits, tabular MDPs).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metafit.functional import Params

__all__ = ["CategoricalMLPPolicy", "GaussianMLPPolicy", "Policy", "per_task", "policy_output"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(in_features: int, out_features: int, hidden: Sequence[int], nonlinearity: str,
        generator: torch.Generator | None) -> nn.Sequential:
    """Linear layers of widths ``hidden`` with ``nonlinearity`` between them, then a
    linear output: Glorot-uniform weights (from ``generator``), zero biases."""
    if nonlinearity not in _ACTIVATIONS:
        raise ValueError(f"nonlinearity must be one of {sorted(_ACTIVATIONS)}, "
                         f"got {nonlinearity!r}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), _ACTIVATIONS[nonlinearity]()]
        width = size
    layers.append(nn.Linear(width, out_features))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class Policy(nn.Module, ABC):
    """pi(a | s) as distribution parameters ``out [..., D]`` (see the module docstring)."""

    obs_dim: int

    @abstractmethod
    def log_prob(self, out: Tensor, actions: Tensor) -> Tensor:
        """``log pi(actions)`` under ``out [..., D]``: ``[...]``."""

    @abstractmethod
    def sample(self, out: Tensor, generator: torch.Generator) -> Tensor:
        """Actions drawn from ``out [..., D]`` (no graph)."""

    @abstractmethod
    def kl(self, p: Tensor, q: Tensor) -> Tensor:
        """``KL(p || q)`` between distributions given by ``p, q [..., D]``: ``[...]``."""

    @abstractmethod
    def entropy(self, out: Tensor) -> Tensor:
        """Entropy of ``out [..., D]``: ``[...]``."""

    @abstractmethod
    def mode(self, out: Tensor) -> Tensor:
        """The most likely action under ``out [..., D]``."""


class GaussianMLPPolicy(Policy):
    """Diagonal Gaussian over ``action_dim`` continuous actions.

    ``out = [mean, log_std]`` (``[..., 2 * action_dim]``): the mean from an MLP of the
    observation, the log-std a free parameter ``[action_dim]`` shared by all states.

    ``action_center`` and ``action_scale`` (constants, not parameters) express the policy
    in units of the action bounds, as rllab's ``normalize`` wrapper did for the MAML
    paper's released code (cbfinn/maml_rl): ``mean = center + scale * MLP(x)`` and
    ``std = scale * exp(log_std)``, so ``init_std`` and ``min_std`` are fractions of the
    half-range and a policy-gradient step moves the MLP in those units. The defaults
    (0, 1) leave the policy in the environment's own units (pytorch-maml-rl's choice).
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (64, 64),
                 nonlinearity: str = "tanh", init_std: float = 1.0, min_std: float = 1e-6,
                 generator: torch.Generator | None = None, action_center: float = 0.0,
                 action_scale: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(action_center) and math.isfinite(action_scale)
                and action_scale > 0):
            raise ValueError(f"action_scale must be finite and > 0 and action_center "
                             f"finite, got {action_scale}, {action_center}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.min_log_std = math.log(min_std)
        self.action_center, self.action_scale = float(action_center), float(action_scale)
        self.mean = mlp(obs_dim, action_dim, hidden, nonlinearity, generator)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.mean(obs)  # [..., act]
        log_std = self.log_std.clamp(min=self.min_log_std).expand_as(mean)  # [..., act]
        if self.action_scale != 1.0 or self.action_center != 0.0:
            mean = self.action_center + self.action_scale * mean
            log_std = log_std + math.log(self.action_scale)
        return torch.cat([mean, log_std], dim=-1)  # [..., 2*act]

    def split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)``, each ``[..., act]``."""
        return out[..., : self.action_dim], out[..., self.action_dim:]

    def log_prob(self, out: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = self.split(out)  # [..., act]
        z = (actions - mean) * torch.exp(-log_std)  # [..., act]
        return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def sample(self, out: Tensor, generator: torch.Generator) -> Tensor:
        mean, log_std = self.split(out.detach())
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=mean.device)  # [..., act]
        return mean + log_std.exp() * noise

    def kl(self, p: Tensor, q: Tensor) -> Tensor:
        mp, lp = self.split(p)
        mq, lq = self.split(q)
        ratio = torch.exp(2 * (lp - lq))  # var_p / var_q, [..., act]
        terms = lq - lp + 0.5 * (ratio + (mp - mq).square() * torch.exp(-2 * lq)) - 0.5
        return terms.sum(dim=-1)

    def entropy(self, out: Tensor) -> Tensor:
        _, log_std = self.split(out)
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(dim=-1)

    def mode(self, out: Tensor) -> Tensor:
        return self.split(out)[0]


class CategoricalMLPPolicy(Policy):
    """Categorical over ``actions`` discrete actions; ``out`` are the logits
    ``[..., actions]``."""

    def __init__(self, obs_dim: int, actions: int, hidden: Sequence[int] = (32, 32),
                 nonlinearity: str = "tanh", generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.obs_dim, self.actions = obs_dim, actions
        self.logits = mlp(obs_dim, actions, hidden, nonlinearity, generator)

    def forward(self, obs: Tensor) -> Tensor:
        return self.logits(obs)  # [..., A]

    def log_prob(self, out: Tensor, actions: Tensor) -> Tensor:
        logp = torch.log_softmax(out, dim=-1)  # [..., A]
        return logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [...]

    def sample(self, out: Tensor, generator: torch.Generator) -> Tensor:
        u = torch.rand(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(out.dtype).tiny)))
        return (out.detach() + gumbel).argmax(dim=-1)  # Gumbel-max: [...]

    def kl(self, p: Tensor, q: Tensor) -> Tensor:
        logp, logq = torch.log_softmax(p, dim=-1), torch.log_softmax(q, dim=-1)
        return (logp.exp() * (logp - logq)).sum(dim=-1)

    def entropy(self, out: Tensor) -> Tensor:
        logp = torch.log_softmax(out, dim=-1)
        return -(logp.exp() * logp).sum(dim=-1)

    def mode(self, out: Tensor) -> Tensor:
        return out.argmax(dim=-1)


def per_task(params: Mapping[str, Tensor], num_tasks: int) -> Params:
    """One copy of ``params`` per task, ``[T, *param]`` each, as a view (``expand``): the
    gradient of a sum of per-task losses with respect to these copies is each task's own
    gradient, and flows back to ``params`` summed."""
    return {n: p.unsqueeze(0).expand(num_tasks, *p.shape) for n, p in params.items()}


def policy_output(policy: Policy, params: Mapping[str, Tensor], obs: Tensor) -> Tensor:
    """Distribution parameters of T tasks' policies: ``params`` ``[T, *param]`` (see
    :func:`per_task`), ``obs [..., T, B, obs]`` -> ``[..., T, B, D]``, task i's
    observations through task i's parameters, in one vectorised call."""
    axis = obs.dim() - 3
    if axis < 0:
        raise ValueError(f"observations must be [..., T, B, obs], got {tuple(obs.shape)}")

    def one_task(p: dict[str, Tensor], o: Tensor) -> Tensor:
        return functional_call(policy, p, (o,))

    return vmap(one_task, in_dims=(0, axis), out_dims=axis)(dict(params), obs)
