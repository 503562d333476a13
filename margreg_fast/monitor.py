r"""A free check that a finite-difference estimator still measures the gradient it stands for.

Every estimate holds, per sample, the exact input-gradient norm ||g|| (from the backward that gives
the direction v = g / ||g||) and the estimator's own slope sigma along v. For a smooth function
sigma -> g . v = ||g|| as h -> 0, so

    secant_ratio = sqrt( sum_i sigma_i^2 / sum_i ||g_i||^2 )

is 1 up to O(h) when the finite difference works. Training that games a one-sided secant drives it
far below 1 (``benchmarks/results/estimator_training.md``: 0.20-0.29 for ``fd`` on max-pool CNNs
whose true R ended 12-25x its estimate); kinks, max-pool ties and too small a step in low precision
move it too. ``rfd``'s randomly signed slope stays near 1 (0.85-0.91 in the same runs). The ratio costs nothing: both numbers are already there.

:class:`SecantMonitor` keeps the ratios of the last ``window`` steps and warns once (a
:class:`SecantWarning`) when their median leaves ``band`` (default [0.5, 2]), after ``warmup`` steps
(default 100). The warm-up is there because a freshly initialised max-pool net on zero-background
images has exact ties in most pooling windows, where any secant differs from autograd's tie-breaking:
measured per epoch of 22 steps, the ratio starts near 0.45 for every estimator, then rises to
0.87-0.94 under ``rfd`` by the third epoch and falls to 0.27-0.32 under ``fd`` by the eighth
(``tests/test_estimator_training.py``'s setting).
"""
from __future__ import annotations

import math
import statistics
import warnings
from collections import deque
from typing import Deque, Optional, Tuple

import torch

#: Median secant ratio outside this band over a full window triggers the warning.
DEFAULT_BAND = (0.5, 2.0)
DEFAULT_WINDOW = 50
DEFAULT_WARMUP = 100


class SecantWarning(UserWarning):
    """The finite difference has stopped measuring the input gradient it stands for."""


def secant_ratio(slope: torch.Tensor, grad_norm: torch.Tensor) -> float:
    """sqrt(sum sigma^2 / sum ||g||^2) over the batch (NaN when every ||g|| is 0)."""
    denominator = grad_norm.double().pow(2).sum().item()
    if denominator == 0:
        return float("nan")
    return math.sqrt(slope.double().pow(2).sum().item() / denominator)


class SecantMonitor:
    """Watches the secant ratio step by step and warns once when its windowed median leaves the band."""

    def __init__(self, method: str, window: int = DEFAULT_WINDOW, band: Tuple[float, float] = DEFAULT_BAND,
                 warmup: int = DEFAULT_WARMUP) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
        low, high = band
        if not 0 < low < 1 < high:
            raise ValueError(f"band must satisfy 0 < low < 1 < high, got {band!r}")
        self.method, self.band = method, (float(low), float(high))
        self.ratios: Deque[float] = deque(maxlen=window)
        self.warmup, self.steps, self.warned = warmup, 0, False

    def update(self, ratio: float) -> Optional[float]:
        """Record one step's ratio; returns the window median once warm-up is over and the window full."""
        self.steps += 1
        if self.steps <= self.warmup:
            return None
        if not math.isnan(ratio):
            self.ratios.append(ratio)
        if len(self.ratios) < self.ratios.maxlen:
            return None
        median = statistics.median(self.ratios)
        low, high = self.band
        if not self.warned and not low <= median <= high:
            self.warned = True
            warnings.warn(
                f"margreg_fast: over the last {len(self.ratios)} steps the {self.method!r} estimator's "
                f"secant slope was {median:.3g}x the exact input-gradient norm (expected within "
                f"[{low:g}, {high:g}]), so the penalty it trains is not the marginal-density penalty. "
                "Training can game a one-sided secant (method='fd'); use the default method='rfd' or "
                "method='exact', or check the step h (stats['secant_ratio'] shows the ratio each step).",
                SecantWarning, stacklevel=3)
        return median
