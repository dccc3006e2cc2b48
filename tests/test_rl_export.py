"""A meta-RL policy exported to ONNX: the same actions as PyTorch, nothing written on a
failed check, the model directory's manifest like a classifier export's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")

from metafit.deploy.errors import ExportError  # noqa: E402
from metafit.deploy.modeldir import read_model_dir  # noqa: E402
from metafit.deploy.onnx_export import onnx_session  # noqa: E402
from metafit.deploy.policy_onnx import export_policy_onnx  # noqa: E402
from metafit.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy  # noqa: E402
from metafit.runs.rl import load_rl_trained  # noqa: E402
from metafit.training.rl import RLTrainer  # noqa: E402
from test_cli_json import run_json  # noqa: E402
from test_rl_training import tiny  # noqa: E402


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rl-export") / "nav"
    RLTrainer(tiny(), out, progress=False).fit()
    return out


def test_cli_exports_a_runs_policy_with_the_same_actions(
        nav_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "policy-onnx"
    report = run_json(capsys, "export", str(nav_run), "--out", str(out))
    assert report["max_abs_diff"] <= report["tolerance"] == 1e-4
    assert report["action_mismatches"] == 0 and report["batches"] == [[64, 2], [1, 2]]
    spec = json.loads((out / "model.json").read_text())
    assert spec["distribution"] == "gaussian" and spec["obs_dim"] == 2
    assert spec["outputs"] == ["action", "distribution"]
    _, algo = load_rl_trained(nav_run, "best")
    obs = torch.randn(7, 2, generator=torch.Generator().manual_seed(3))
    action, dist = onnx_session(out / "model.onnx").run(None, {"observations": obs.numpy()})
    with torch.no_grad():
        ours = algo.policy(obs)  # [7, 4]: mean, log_std
    torch.testing.assert_close(torch.from_numpy(dist), ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(action), ours[:, :2], atol=1e-5, rtol=0)
    manifest, files = read_model_dir(out, "onnx")  # verified: sizes and digests
    assert set(files) == {"model.onnx", "model.json", "export.json"}
    assert manifest["content"] == "onnx"


def test_a_categorical_policy_exports_its_arg_max(tmp_path: Path) -> None:
    policy = CategoricalMLPPolicy(4, 5, (8,), generator=torch.Generator().manual_seed(0))
    params = {n: p.detach() + 0.5 for n, p in policy.named_parameters()}  # e.g. adapted
    report = export_policy_onnx(policy, params, tmp_path / "bandit")
    assert report.action_mismatches == 0
    obs = torch.eye(4)
    action, logits = onnx_session(tmp_path / "bandit" / "model.onnx").run(
        None, {"observations": obs.numpy()})
    expected = torch.func.functional_call(policy, params, (obs,))
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-5, rtol=0)
    assert action.dtype.kind == "i" and action.tolist() == expected.argmax(-1).tolist()


def test_parameters_of_another_policy_are_refused(tmp_path: Path) -> None:
    policy = GaussianMLPPolicy(2, 2, (8,))
    other = GaussianMLPPolicy(2, 2, (16,))
    with pytest.raises(ExportError, match="has shape"):
        export_policy_onnx(policy, dict(other.named_parameters()), tmp_path / "x")
    with pytest.raises(ExportError, match="missing"):
        export_policy_onnx(policy, {}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_failed_parity_check_writes_nothing(tmp_path: Path) -> None:
    policy = GaussianMLPPolicy(2, 2, (8,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ExportError, match="parity check failed"):
        export_policy_onnx(policy, dict(policy.named_parameters()), tmp_path / "x",
                           tolerance=-1.0)
    assert not (tmp_path / "x").exists()


def test_quantize_is_refused_for_a_policy(nav_run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from metafit.cli.main import main

    assert main(["export", str(nav_run), "--out", str(tmp_path / "q"),
                 "--quantize", "int8"]) != 0
    assert "--quantize is for classifiers" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
