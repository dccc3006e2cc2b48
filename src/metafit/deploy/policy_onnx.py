"""A meta-RL policy as an ONNX model directory: observations in, actions out.

The graph maps ``observations [B, obs]`` (float32) to ``action [B, act]`` (the
distribution's mode: a Gaussian policy's mean, a categorical policy's arg-max as int64
``[B]``) and ``distribution [B, D]`` (the policy's own output: ``[mean, log_std]`` for a
Gaussian policy, logits for a categorical one; see :mod:`metafit.rl.policies`), so a
controller can act deterministically or sample itself. It is written as the same ``onnx``
model directory as a classifier's export (:mod:`metafit.deploy.onnx_export`: ``model.onnx``,
``model.json``, ``export.json`` and a manifest, atomically) after an onnxruntime parity
check on seeded observations; nothing is written when the check fails.

Which parameters: a run's meta-learned initialisation (:func:`export_run_policy`, what
``metafit export RUN`` does) or any parameter set of the same policy, e.g. one adapted to a
task with :meth:`~metafit.rl.maml.MAMLRL.inner_step` (:func:`export_policy_onnx`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metafit.deploy.errors import ExportError
from metafit.deploy.modeldir import write_model_dir
from metafit.deploy.onnx_export import OPSET, TOLERANCE, export_graph, onnx_session
from metafit.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Policy
from metafit.runs.rl import load_rl_trained

__all__ = ["PolicyExportReport", "export_policy_onnx", "export_run_policy"]

INPUTS = ["observations"]
OUTPUTS = ["action", "distribution"]


@dataclass
class PolicyExportReport:
    """The parity check of a policy export: the largest absolute differences between
    onnxruntime's and PyTorch's outputs over the sample batches ``batches`` (shapes)."""

    path: str
    max_abs_diff: float
    action_mismatches: int
    tolerance: float
    batches: list[list[int]] = field(default_factory=list)
    opset: int = OPSET
    export_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _PolicyGraph(nn.Module):
    """``observations [B, obs] -> (action, distribution)`` with fixed parameters."""

    def __init__(self, policy: Policy, params: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.policy = policy
        self.params = {n: p.detach().clone() for n, p in params.items()}

    def forward(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(self.policy, self.params, (observations,))  # [B, D]
        return self.policy.mode(out), out


def _spec(policy: Policy) -> dict[str, Any]:
    if isinstance(policy, GaussianMLPPolicy):
        return {"kind": "policy", "distribution": "gaussian", "obs_dim": policy.obs_dim,
                "action_dim": policy.action_dim,
                "action": "mean (float32 [B, act])",
                "distribution_layout": "[mean (act), log_std (act)]"}
    if isinstance(policy, CategoricalMLPPolicy):
        return {"kind": "policy", "distribution": "categorical", "obs_dim": policy.obs_dim,
                "actions": policy.actions, "action": "arg-max (int64 [B])",
                "distribution_layout": "logits (actions)"}
    raise ExportError(f"cannot export a {type(policy).__name__}: only the Gaussian and "
                      "categorical MLP policies have an ONNX layout")


def _check_params(policy: Policy, params: Mapping[str, Tensor]) -> None:
    own = dict(policy.named_parameters())
    if set(own) != set(params):
        raise ExportError(f"the parameters do not fit the policy: missing "
                          f"{sorted(set(own) - set(params))}, unexpected "
                          f"{sorted(set(params) - set(own))}")
    for name, p in own.items():
        if tuple(params[name].shape) != tuple(p.shape):
            raise ExportError(f"parameter {name!r} has shape {tuple(params[name].shape)}, "
                              f"the policy's is {tuple(p.shape)}")


def _samples(obs_dim: int, count: int, seed: int) -> Tensor:
    """Seeded observations for the parity check: ``[count, obs_dim]``, unit normal times 3
    (covers the positions, velocities and one-hot states the families produce)."""
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(count, obs_dim, generator=g)


def export_policy_onnx(policy: Policy, params: Mapping[str, Tensor],
                       out: str | os.PathLike[str], tolerance: float = TOLERANCE,
                       samples: Tensor | None = None, source: str | None = None
                       ) -> PolicyExportReport:
    """Export ``policy`` with the parameter set ``params`` (names and shapes of
    ``policy.named_parameters()``, one task's: no leading task axis) to the ONNX model
    directory ``out`` after a parity check in onnxruntime on ``samples [B, obs]`` (default:
    64 seeded observations) and on one observation.

    Raises:
        ExportError: parameters that do not fit, an exporter failure, or outputs that
            differ from PyTorch's by more than ``tolerance`` / a different action (nothing
            is written).
        ImportError: the ``export`` extra is not installed.
    """
    spec = _spec(policy)
    _check_params(policy, params)
    graph = _PolicyGraph(policy, params).eval()
    x = _samples(policy.obs_dim, 64, 0) if samples is None else samples.float()
    if x.dim() != 2 or x.shape[1] != policy.obs_dim:
        raise ExportError(f"sample observations must be [B, {policy.obs_dim}], got "
                          f"{tuple(x.shape)}")
    with tempfile.TemporaryDirectory(prefix="metafit-onnx-") as work:
        path = Path(work) / "model.onnx"
        start = time.perf_counter()
        try:
            export_graph(graph, (x,), INPUTS, path, OUTPUTS)
        except Exception as e:  # any exporter failure, with its reason
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - start
        session = onnx_session(path)
        diff, mismatches, shapes = 0.0, 0, []
        with torch.no_grad():
            for batch in (x, x[:1]):
                action, dist = graph(batch)
                got_action, got_dist = session.run(OUTPUTS, {INPUTS[0]: batch.numpy()})
                got_dist_t = torch.from_numpy(got_dist)
                if got_dist_t.shape != dist.shape:
                    raise ExportError(f"the ONNX policy returned {tuple(got_dist_t.shape)}, "
                                      f"PyTorch {tuple(dist.shape)}")
                diff = max(diff, float((got_dist_t - dist).abs().max()))
                got_action_t = torch.from_numpy(got_action)
                if action.is_floating_point():
                    diff = max(diff, float((got_action_t - action).abs().max()))
                else:
                    mismatches += int((got_action_t != action).sum())
                shapes.append(list(batch.shape))
        if not diff <= tolerance or mismatches:
            raise ExportError(f"ONNX parity check failed: outputs differ from PyTorch's by up "
                              f"to {diff:.3g} (tolerance {tolerance:g}), {mismatches} "
                              "different actions; nothing was written")
        onnx_bytes = path.read_bytes()
    report = PolicyExportReport(str(out), diff, mismatches, tolerance, shapes,
                                export_seconds=round(seconds, 2))
    model_json = {**spec, "runtime": "onnx", "inputs": INPUTS, "outputs": OUTPUTS,
                  "source": source}
    write_model_dir(out, {"model.onnx": onnx_bytes,
                          "model.json": (json.dumps(model_json, indent=1) + "\n").encode(),
                          "export.json": (json.dumps(report.to_dict(), indent=1)
                                          + "\n").encode()}, "onnx")
    return report


def export_run_policy(run: str | os.PathLike[str], out: str | os.PathLike[str],
                      which: str = "best", tolerance: float = TOLERANCE
                      ) -> PolicyExportReport:
    """Export the meta-learned policy of the meta-RL run ``run`` (its ``which`` checkpoint,
    read and checked by :func:`~metafit.runs.rl.load_rl_trained`) to ``out``; see
    :func:`export_policy_onnx`."""
    recipe, algo = load_rl_trained(Path(run), which)
    params = {n: p.detach() for n, p in algo.policy.named_parameters()}
    return export_policy_onnx(algo.policy, params, out, tolerance,
                              source=f"{Path(run).name} ({recipe.algorithm}, "
                                     f"{recipe.dataset}, checkpoint {which})")
