r"""Paired differences over seeds, their bootstrap interval, and the verdict read from it.

For a metric m, a subject scheme s (mdr) and a comparator c (none, igr, joint), seed k gives the
paired difference d_k = m(s, k) - m(c, k): both runs trained and evaluated on the same data split,
block order and evaluation images, so the seed-to-seed variation of the data cancels. The interval
is a 95% bootstrap interval of mean_k d_k (``scipy.stats.bootstrap`` on the d_k alone, which is what
pairing means), ``method="percentile"``, 10,000 resamples, a fixed generator.

Why percentile and not BCa: with 5 seeds BCa's acceleration is a jackknife over 5 values and its
adjusted quantiles can land on the extreme order statistics, so the interval jumps when one seed
moves; the percentile interval only reads the resampled means. Neither covers 95% with 5 values
(bootstrap intervals are too narrow for tiny samples): an interval that excludes 0 is evidence over
these seeds, not a proof.

Verdicts, for a claim that the subject is better, "better" being higher (``better=+1``) or lower
(``better=-1``), and a margin mu >= 0 (0 for "better than"; 0.01 for "accuracy at most 1 point
lower", a non-inferiority claim):

    SUPPORTED     the whole interval lies on the claimed side of -mu (better=+1: low > -mu;
                  better=-1: high < +mu)
    CONTRADICTED  the whole interval lies on the other side (better=+1: high < -mu; better=-1: low > +mu)
    INCONCLUSIVE  otherwise, or fewer than 2 paired seeds

No verdict is ever read from the means.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
VERDICTS = ("SUPPORTED", "CONTRADICTED", "INCONCLUSIVE")


@dataclass(frozen=True)
class Paired:
    """The paired differences of one comparison and what is read from them."""

    diffs: tuple[float, ...]   # d_k, seed order
    mean: float | None
    low: float | None
    high: float | None

    def to_dict(self) -> dict:
        return {"diffs": list(self.diffs), "mean": self.mean, "low": self.low, "high": self.high}


def bootstrap_interval(diffs) -> tuple[float, float]:
    """(low, high): the 95% percentile bootstrap interval of the mean of ``diffs`` (module docstring)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or d.size < 2 or not np.all(np.isfinite(d)):
        raise ValueError(f"need at least 2 finite differences, got {diffs!r}")
    if np.ptp(d) == 0:  # every resample has the same mean
        return float(d[0]), float(d[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                             method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
    return float(ci.low), float(ci.high)


def paired(subject: dict, comparator: dict) -> Paired:
    """Paired differences subject[k] - comparator[k] over the seeds k where both are numbers
    (``{seed: value or None}``), with their mean and bootstrap interval (None with < 2 pairs)."""
    seeds = [k for k in subject if k in comparator and subject[k] is not None and comparator[k] is not None]
    diffs = tuple(float(subject[k]) - float(comparator[k]) for k in sorted(seeds))
    if len(diffs) < 2:
        return Paired(diffs, math.fsum(diffs) / len(diffs) if diffs else None, None, None)
    return Paired(diffs, math.fsum(diffs) / len(diffs), *bootstrap_interval(diffs))


def verdict(p: Paired, better: int, margin: float = 0.0) -> str:
    """SUPPORTED / CONTRADICTED / INCONCLUSIVE for the claim "subject better than comparator by more than
    -margin" (module docstring)."""
    if better not in (1, -1) or margin < 0:
        raise ValueError(f"need better in (1, -1) and margin >= 0, got {better}, {margin}")
    if p.low is None:
        return "INCONCLUSIVE"
    low, high = (p.low, p.high) if better == 1 else (-p.high, -p.low)  # the gain, higher is better
    if low > -margin:
        return "SUPPORTED"
    if high < -margin:
        return "CONTRADICTED"
    return "INCONCLUSIVE"


def comparison_cell(c: dict) -> str:
    """A table cell for a paired comparison: mean difference [95% interval] verdict."""
    if c["mean"] is None:
        return "n/a"
    interval = "" if c["low"] is None else f" [{c['low']:+.3g}, {c['high']:+.3g}]"
    return f"{c['mean']:+.3g}{interval} {c['verdict']}"
