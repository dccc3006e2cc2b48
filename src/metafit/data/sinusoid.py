"""The sinusoid regression task family of MAML (Finn et al. 2017, "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", sec. 5.1).

Each task is a sine wave ``y = A * sin(x - phase)`` with amplitude ``A ~ U[0.1, 5.0]`` and
phase ``phase ~ U[0, pi]``; its inputs are ``x ~ U[-5, 5]``. Convention: the phase is
*subtracted* (the wave is shifted right by ``phase``); the paper does not fix the sign and
the two conventions give the same task distribution up to the sign of the phase.

A task family draws its own episodes, vectorised over tasks (no Python loop), from the
``torch.Generator`` it is given and from nothing else; it keeps no state between calls.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metafit.episodes import Episodes

__all__ = ["Sinusoid"]


def _check_range(name: str, low: float, high: float) -> tuple[float, float]:
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"Sinusoid: {name} range must be finite, got ({low}, {high})")
    if low > high:
        raise ValueError(f"Sinusoid: {name} range needs low <= high, got low={low} > high={high}")
    return low, high


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"Sinusoid: {name} must be a positive integer, got {value!r}")


class Sinusoid:
    """Sine-wave regression tasks (MAML, Finn et al. 2017, sec. 5.1).

    Implements the :class:`~metafit.data.base.TaskFamily` protocol, so
    ``EpisodeSampler(Sinusoid(), ways=1, shots=10, queries=10, seed=0)`` samples K-shot
    regression episodes (``ways`` is ignored).

    Args:
        amplitude: ``(low, high)`` of the uniform amplitude distribution.
        phase: ``(low, high)`` of the uniform phase distribution (radians).
        x_range: ``(low, high)`` of the uniform input distribution.

    Raises:
        ValueError: a range with ``low > high`` or a non-finite bound.

    Reproducing the task parameters: :meth:`sample_episodes` first calls
    :meth:`sample_tasks` on the generator (amplitudes, then phases), and only then draws
    the inputs. A caller who wants the true curves clones the generator state beforehand::

        state = gen.get_state()
        eps = family.sample_episodes(n, shots, queries, gen)
        amplitude, phase = family.sample_tasks(n, torch.Generator().set_state(state))
        y_true = Sinusoid.curve(amplitude, phase, eps.query_x)  # == eps.query_y
    """

    is_regression: bool = True

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        self.amplitude = _check_range("amplitude", *amplitude)
        self.phase = _check_range("phase", *phase)
        self.x_range = _check_range("x_range", *x_range)

    @staticmethod
    def curve(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
        """``A * sin(x - phase)``, the true function of each task.

        Args:
            amplitude: ``[T]`` (or a scalar) amplitudes.
            phase: ``[T]`` (or a scalar) phases, same shape as ``amplitude``.
            x: ``[T, *s]`` inputs (e.g. ``[T, M, 1]``); the task parameters are broadcast
                over the trailing axes.

        Returns:
            ``[T, *s]`` outputs, in the dtype of ``x``.
        """
        amplitude = torch.as_tensor(amplitude, dtype=x.dtype, device=x.device)
        phase = torch.as_tensor(phase, dtype=x.dtype, device=x.device)
        extra = (1,) * (x.dim() - amplitude.dim())
        a = amplitude.reshape(*amplitude.shape, *extra)  # [T, 1, ..., 1]
        p = phase.reshape(*phase.shape, *extra)  # [T, 1, ..., 1]
        return a * torch.sin(x - p)  # [T, *s]

    def sample_tasks(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``n`` task parameters: ``(amplitude [n], phase [n])``, float32.

        Draws the amplitudes first, then the phases, from ``generator`` only.
        """
        _check_count("n", n)
        a_lo, a_hi = self.amplitude
        p_lo, p_hi = self.phase
        f32 = torch.float32
        amplitude = a_lo + (a_hi - a_lo) * torch.rand(n, generator=generator, dtype=f32)  # [T]
        phase = p_lo + (p_hi - p_lo) * torch.rand(n, generator=generator, dtype=f32)  # [T]
        return amplitude, phase

    def sample_episodes(
        self, n: int, shots: int, queries: int, generator: torch.Generator
    ) -> Episodes:
        """``n`` regression tasks with ``shots`` support and ``queries`` query points.

        Returns:
            :class:`Episodes` with ``support_x``/``support_y`` ``[n, shots, 1]`` and
            ``query_x``/``query_y`` ``[n, queries, 1]`` (float32), ``classes=None``.
        """
        _check_count("shots", shots)
        _check_count("queries", queries)
        amplitude, phase = self.sample_tasks(n, generator)  # [T], [T]
        x_lo, x_hi = self.x_range
        x = x_lo + (x_hi - x_lo) * torch.rand(
            n, shots + queries, 1, generator=generator, dtype=torch.float32
        )  # [T, K+Q, 1]
        y = self.curve(amplitude, phase, x)  # [T, K+Q, 1]
        return Episodes(
            support_x=x[:, :shots].contiguous(),  # [T, K, 1]
            support_y=y[:, :shots].contiguous(),  # [T, K, 1]
            query_x=x[:, shots:].contiguous(),  # [T, Q, 1]
            query_y=y[:, shots:].contiguous(),  # [T, Q, 1]
            classes=None,
        )

    def __repr__(self) -> str:
        return f"Sinusoid(amplitude={self.amplitude}, phase={self.phase}, x_range={self.x_range})"
