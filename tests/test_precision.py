"""Mixed precision (the recipe key ``precision``): float32 changes nothing, bf16 / fp16
autocast keeps MAML's second-order meta-gradient close to float32's, fp16's dynamic loss
scaling, and the checks on what a device can run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from metafit.algorithms import FOMAML, MAML
from metafit.algorithms.base import INITIAL_LOSS_SCALE
from metafit.config.files import RecipeError
from metafit.config.schema import make_recipe
from metafit.episodes import Episodes
from metafit.execution import Execution, meta_gradients
from metafit.execution.precision import (
    autocast_supported,
    check_precision,
    precision_context,
)
from metafit.execution.threads import per_task_gradients
from metafit.models import conv4, mlp
from metafit.models.blocks import ConvBlock, fused_block_applies, once_differentiable_region
from metafit.runs.directory import RunDir
from metafit.runs.trained import evaluate_run, load_trained
from metafit.training.optim import DynamicLossScale
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe, image_folder


def blobs(tasks: int = 4, ways: int = 3, shots: int = 2, queries: int = 4, dim: int = 16,
          seed: int = 0, image: int | None = None) -> Episodes:
    """Class means plus noise, zero-centred; ``image``: as ``[1, image, image]`` pictures."""
    gen = torch.Generator().manual_seed(seed)
    shape = (dim,) if image is None else (1, image, image)
    means = torch.randn(tasks, ways, *shape, generator=gen)

    def draw(k: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(ways).repeat_interleave(k).expand(tasks, -1).clone()  # [T, N*k]
        x = means[torch.arange(tasks)[:, None], y] + 0.5 * torch.randn(
            tasks, ways * k, *shape, generator=gen)
        return x, y

    (sx, sy), (qx, qy) = draw(shots), draw(queries)
    return Episodes(sx, sy, qx, qy)


def relative_error(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """``||a - b|| / ||b||`` over all gradients together (float64)."""
    num = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in b)
    den = sum((b[k].double() ** 2).sum() for k in b)
    return float(torch.sqrt(num / den))


def tiny_maml(precision: str = "float32", first_order: bool = False, **execution: object
              ) -> MAML:
    torch.manual_seed(0)
    model = mlp(in_features=16, out_features=3, hidden=32, depth=2)
    cls = FOMAML if first_order else MAML
    return cls(model, inner_lr=0.4, inner_steps=1,
               execution=Execution(precision=precision, **execution))  # type: ignore[arg-type]


def test_float32_is_the_path_of_before_bit_for_bit() -> None:
    """The default and an explicit float32 compute exactly what the executor's per-task
    body computed before the setting existed (conv4: the fused first block included)."""
    torch.manual_seed(0)
    model = conv4(out_features=3, in_channels=1, hidden=8, image_size=16)
    algo = MAML(model, inner_lr=0.4, inner_steps=1, execution=Execution("loop", 1))
    episodes = blobs(tasks=2, image=16)
    before, loss, scores = per_task_gradients(algo, episodes, 1)
    for execution in (Execution("loop", 1), Execution("loop", 1, precision="float32")):
        grads, metrics = meta_gradients(algo, episodes, execution)
        assert all(torch.equal(grads[n], before[n]) for n in before)
        assert metrics["loss"] == float(loss)
    bf16, _ = meta_gradients(algo, episodes, Execution("loop", 1, precision="bf16"))
    assert not all(torch.equal(bf16[n], before[n]) for n in before)  # the test can fail


def test_default_recipe_trains_identically_to_float32(tmp_path: Path) -> None:
    """A few training iterations: the same metrics and parameters with the key left out
    and set to float32 (and different ones in bf16, so the comparison can fail)."""
    root = image_folder(tmp_path / "data")
    runs = {}
    for label, extra in (("default", {}), ("float32", {"precision": "float32"}),
                         ("bf16", {"precision": "bf16"})):
        recipe = classification_recipe(root, "maml", iterations=4, val_every=4, **extra)
        Trainer(recipe, tmp_path / label, progress=False).fit()
        runs[label] = RunDir(tmp_path / label)
    losses = {k: [r["loss"] for r in run.read_metrics() if r["split"] == "train"]
              for k, run in runs.items()}
    assert losses["default"] == losses["float32"] and len(losses["default"]) == 4
    assert losses["bf16"] != losses["default"]
    _, a = load_trained(tmp_path / "default", "last")
    _, b = load_trained(tmp_path / "float32", "last")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_bf16_second_order_meta_gradient_is_close_to_float32(batching: str) -> None:
    """MAML's second-order meta-gradient under bf16 autocast against float32's.

    The bound: bfloat16 keeps 8 significant bits (unit roundoff u = 2^-8 = 3.9e-3), and
    each matmul's output is rounded once; one inner step and the query pass chain about
    a dozen rounded matmuls (3 forward and 3 backward in the inner step, the double
    backward through them, 3 forward and backward on the query), so a relative error of
    a few u times the problem's conditioning is expected: 0.3-4% on this MLP over seeds
    0-5 and both paths (measured), bounded here at 10%, for fp16 (u = 2^-11) too, which
    is mostly 10x closer but not always (a ReLU whose input rounds across zero flips a
    gradient term). That the error is rounding and not a lost term: the bf16
    meta-gradient is far closer to float32's second-order one than float32's
    first-order one is (32-36% away), so the second derivatives flow through autocast."""
    episodes = blobs()
    exact, _ = tiny_maml(batching=batching).meta_gradients(episodes)
    first, _ = tiny_maml(first_order=True, batching=batching).meta_gradients(episodes)
    bf16, metrics = tiny_maml("bf16", batching=batching).meta_gradients(episodes)
    fp16, _ = tiny_maml("fp16", batching=batching).meta_gradients(episodes)
    err_bf16, err_fp16 = relative_error(bf16, exact), relative_error(fp16, exact)
    second_order_part = relative_error(first, exact)
    assert 0 < err_bf16 < 0.1, err_bf16  # 0: autocast did nothing
    assert 0 < err_fp16 < 0.1, err_fp16
    assert err_bf16 < second_order_part / 4, (err_bf16, second_order_part)
    assert all(g.dtype == torch.float32 for g in bf16.values())  # parameters' dtype
    assert metrics["loss"] == pytest.approx(
        tiny_maml().meta_gradients(episodes)[1]["loss"], rel=0.05)


def test_worker_threads_run_under_autocast_too() -> None:
    """Autocast is thread-local: tasks on two worker threads get the same bf16 gradients
    as the serial loop (up to the order of summation), not float32's."""
    episodes = blobs()
    serial, _ = tiny_maml("bf16", batching="loop", workers=1).meta_gradients(episodes)
    threaded, _ = tiny_maml("bf16", batching="loop", workers=2).meta_gradients(episodes)
    exact, _ = tiny_maml(batching="loop", workers=2).meta_gradients(episodes)
    assert relative_error(threaded, serial) < 1e-5
    assert relative_error(threaded, exact) > 1e-3


def test_fused_block_steps_aside_under_autocast() -> None:
    block, x = ConvBlock(1, 4), torch.randn(2, 1, 8, 8)
    with once_differentiable_region():
        assert fused_block_applies(block, x)
        with precision_context("bf16", "cpu"):
            assert not fused_block_applies(block, x)


def test_fp16_scales_the_loss_and_unscales_the_gradients() -> None:
    """fp16: a loss-scale buffer (not saved), gradients returned unscaled."""
    algo = tiny_maml("fp16")
    assert algo.loss_scale is not None and float(algo.loss_scale) == INITIAL_LOSS_SCALE
    assert "loss_scale" not in algo.state_dict()
    episodes = blobs()
    scaled, _ = algo.meta_gradients(episodes)
    algo.loss_scale.fill_(1.0)
    unscaled, _ = algo.meta_gradients(episodes)
    assert relative_error(scaled, unscaled) < 1e-2
    assert tiny_maml("bf16").loss_scale is None


def test_dynamic_loss_scale_skips_overflow_and_grows() -> None:
    scale = torch.tensor(8.0)
    scaler = DynamicLossScale(scale, growth_interval=2)
    assert not scaler.finite({"w": torch.tensor([1.0, float("inf")])})
    assert float(scale) == 4.0 and scaler.skipped == 1
    assert scaler.finite({"w": torch.ones(2)}) and float(scale) == 4.0
    assert scaler.finite({"w": torch.ones(2)}) and float(scale) == 8.0
    assert not scaler.finite({"w": torch.tensor(float("nan"))}) and float(scale) == 4.0


def test_fp16_training_run_reports_its_loss_scale(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data")
    recipe = classification_recipe(root, "maml", iterations=3, val_every=3, precision="fp16")
    Trainer(recipe, tmp_path / "run", progress=False).fit()
    train = [r for r in RunDir(tmp_path / "run").read_metrics() if r["split"] == "train"]
    scales = [r["loss_scale"] for r in train]  # as each step began
    assert scales[0] == INITIAL_LOSS_SCALE and len(scales) == 3
    # each later scale is the last one halved (an overflow: step skipped) or kept
    assert all(b in (a, a / 2) for a, b in zip(scales, scales[1:], strict=False)), scales
    _, algo = load_trained(tmp_path / "run", "last")
    assert all(torch.isfinite(p).all() for p in algo.state_dict().values())


def test_bf16_run_reaches_float32_accuracy(tmp_path: Path) -> None:
    """A short conv4 run in bf16 scores within 10 points of float32 on the same test
    episodes (both evaluated in float32)."""
    root = image_folder(tmp_path / "data")
    scores = {}
    for precision in ("float32", "bf16"):
        recipe = classification_recipe(root, "maml", iterations=20, val_every=20,
                                       test_episodes=40, precision=precision)
        Trainer(recipe, tmp_path / precision, progress=False).fit()
        scores[precision] = evaluate_run(tmp_path / precision).mean
    assert scores["float32"] > 0.7, scores  # the problem is learnt at all
    assert abs(scores["bf16"] - scores["float32"]) < 0.1, scores


def test_what_a_device_can_run() -> None:
    check_precision("float32", "cpu")
    check_precision("bf16", "cpu")
    if autocast_supported("cpu", torch.float16):  # torch >= 2.3 runs fp16 autocast on CPU
        check_precision("fp16", "cpu")
    else:
        with pytest.raises(ValueError, match="does not support"):
            check_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        check_precision("tf32", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        Execution(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="tf32"):
        make_recipe({"name": "x", "dataset": "sinusoid", "model": "mlp", "precision": "tf32"})
