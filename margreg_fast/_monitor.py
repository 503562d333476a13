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
in ``tests/test_estimator_training.py``'s setting the ratio starts well below the band for every
estimator, then rises into it under ``rfd`` within the first epochs while under ``fd`` it falls and
stays low (the end-of-training ratios are in ``benchmarks/results/estimator_training.md``).

A diverging run cannot wait for a window: the monitor warns at once (also once) when the step's
penalty is not finite (naming an empty batch or a non-finite input batch as such, when that is the
cause), or when the ratio is not finite while the input gradient is non-zero. A zero
input gradient is no failure (timm zero-initialises some heads, which gives R = 0 exactly): its
ratio 0/0 is NaN and stays quiet. Each warning names the cause that fits the estimator and the
symptom -- the one-sided secant (``fd``, low ratio), the step h, random draws that differ between
passes (a far too large ratio, or a non-finite probe), a diverging penalty -- and points at the
user's line: its stacklevel is that of the first frame outside margreg_fast and torch.

The ratio is computed from two sums that the regulariser transfers with its other statistics in
one host synchronisation (:func:`secant_sums`, :func:`ratio_of_sums`).

The ratio measures a magnitude. The direction of the penalty's parameter gradient -- what training
follows -- can be lost while the ratio stays near 1 (kinks on one side of a sample, rounding): the
opt-in direction audit of :mod:`margreg_fast._audit` (``audit_every=``) measures it. The estimators'
advice for a low ratio comes from their registry entries (:mod:`._estimators.registry`).
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import warnings
from collections import deque
from typing import Deque, Optional, Tuple

import torch

from ._estimators.registry import ESTIMATORS

#: Median secant ratio outside this band over a full window triggers the warning.
DEFAULT_BAND = (0.5, 2.0)
DEFAULT_WINDOW = 50
DEFAULT_WARMUP = 100


class SecantWarning(UserWarning):
    """The finite difference has stopped measuring the input gradient it stands for, or the penalty diverged."""


def stats_dtype(device: torch.device) -> torch.dtype:
    """The dtype of per-step statistics on ``device``: float64, or float32 where the device has no
    float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def secant_sums(slope: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """(sum sigma^2, sum ||g||^2) over the batch as one tensor of shape (2,), on the device, in
    :func:`stats_dtype`."""
    dtype = stats_dtype(slope.device)
    return torch.stack([slope.detach().to(dtype).pow(2).sum(), grad_norm.detach().to(dtype).pow(2).sum()])


def ratio_of_sums(slope_sq: float, grad_sq: float) -> float:
    """sqrt(slope_sq / grad_sq); NaN when grad_sq is 0 (0/0, or a slope with no gradient)."""
    if grad_sq == 0:
        return float("nan")
    return math.sqrt(slope_sq / grad_sq) if slope_sq >= 0 else float("nan")


def secant_ratio(slope: torch.Tensor, grad_norm: torch.Tensor) -> float:
    """sqrt(sum sigma^2 / sum ||g||^2) over the batch (NaN when every ||g|| is 0); one host transfer."""
    return ratio_of_sums(*secant_sums(slope, grad_norm).tolist())


_INTERNAL = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by this function's caller point at the user's line.

    Counts the frames from the caller upwards to the first outside margreg_fast and torch (the
    regulariser is called through ``nn.Module.__call__``).
    """
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def _input_fault(inputs: Optional[torch.Tensor]) -> Optional[str]:
    """What is wrong with the step's input batch, when that explains a non-finite penalty (else None)."""
    if inputs is None:
        return None
    if inputs.shape[0] == 0:
        return ("The batch is empty (0 samples): its means are 0/0. Skip empty batches (a sampler or filter "
                "that can yield none).")
    if not bool(torch.isfinite(inputs).all()):  # the failure path only: one more host read
        return ("The input batch holds NaN or infinite values, not the model or the step: check the data "
                "pipeline (normalisation by a zero std, corrupt samples, a mixing augmentation).")
    return None


class SecantMonitor:
    """Watches the secant ratio step by step: warns once when its windowed median leaves the band,
    and at once when the penalty or (with a non-zero gradient) the ratio is not finite."""

    def __init__(self, estimator: str, window: int = DEFAULT_WINDOW, band: Tuple[float, float] = DEFAULT_BAND,
                 warmup: int = DEFAULT_WARMUP) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
        low, high = band
        if not 0 < low < 1 < high:
            raise ValueError(f"band must satisfy 0 < low < 1 < high, got {band!r}")
        self.estimator, self.band = estimator, (float(low), float(high))
        self.ratios: Deque[float] = deque(maxlen=window)
        self.warmup, self.steps, self.warned, self.warned_non_finite = warmup, 0, False, False

    def update(self, ratio: float, penalty: float = 0.0, grad_norm: float = 0.0,
               inputs: Optional[torch.Tensor] = None) -> Optional[float]:
        """Record one step (its secant ratio, mean penalty and mean ||g||); returns the window median
        once warm-up is over and the window full. ``inputs``: the step's input batch, read (once, on
        the device) only when the penalty is not finite, to name an empty batch or a non-finite input."""
        self.steps += 1
        self._check_finite(ratio, penalty, grad_norm, inputs)
        if self.steps <= self.warmup:
            return None
        if math.isfinite(ratio):
            self.ratios.append(ratio)
        if len(self.ratios) < self.ratios.maxlen:
            return None
        median = statistics.median(self.ratios)
        low, high = self.band
        if not self.warned and not low <= median <= high:
            self.warned = True
            warnings.warn(
                f"margreg_fast: over the last {len(self.ratios)} steps the {self.estimator!r} estimator's "
                f"secant slope was {median:.3g}x the exact input-gradient norm (expected within "
                f"[{low:g}, {high:g}]), so the penalty it trains is not the marginal-density penalty. "
                f"{self._advice(median)} (stats['secant_ratio'] shows the ratio each step).",
                SecantWarning, stacklevel=user_stacklevel())
        return median

    def _check_finite(self, ratio: float, penalty: float, grad_norm: float,
                      inputs: Optional[torch.Tensor] = None) -> None:
        if self.warned_non_finite:
            return
        if not math.isfinite(penalty) or not math.isfinite(grad_norm):
            what = f"the penalty is {penalty} (mean ||grad_x S|| {grad_norm})"
            advice = _input_fault(inputs) or (
                "The input gradient diverged: lower the weight or the learning rate, or check the input "
                "scale and the model's numerics (e.g. BatchNorm over tiny batches).")
        elif grad_norm != 0 and not math.isfinite(ratio):
            what = f"the {self.estimator!r} estimator's secant ratio is {ratio} with a non-zero input gradient"
            advice = ("Its probe forward gave non-finite logits: the step h may be too large for the model's "
                      "range (pass a smaller step=), or the passes disagree (random draws outside torch's "
                      "generators, e.g. NumPy or Python's random, differ between passes).")
        else:
            return
        self.warned_non_finite = True
        warnings.warn(f"margreg_fast: at step {self.steps} {what}. {advice}", SecantWarning,
                      stacklevel=user_stacklevel())

    def _advice(self, median: float) -> str:
        low, high = self.band
        specific = ESTIMATORS[self.estimator].low_ratio_advice if self.estimator in ESTIMATORS else ""
        if specific and median < low:
            return specific
        if median > 10 * high:
            return ("A slope this far above the gradient usually means the passes see different networks: "
                    "random draws outside torch's generators (NumPy, Python's random) or state the model "
                    "changes between forwards. Make the forward deterministic given torch's generators.")
        return ("Check the step h (step=; the default 'auto' scales with the input), and kinks or max-pool "
                "ties, where any secant differs from autograd's derivative"
                ".")
