"""Paired bootstrap intervals and the verdicts read from them."""
import numpy as np
import pytest

from margreg_fast.kit.experiments.intervals import Paired, bootstrap_interval, paired, verdict


def test_two_values_give_the_exact_percentile_interval():
    # resampled means of (0, 1): 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # percentiles are the extremes
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)


def test_interval_holds_the_mean_and_follows_the_data():
    d = [0.8, 1.1, 0.9, 1.3, 1.0]
    low, high = bootstrap_interval(d)
    assert min(d) <= low < np.mean(d) < high <= max(d)
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)  # degenerate: every resample agrees
    assert bootstrap_interval(d) == (low, high)  # fixed generator: reproducible
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_interval([1.0])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_interval([1.0, float("nan")])


def test_pairs_are_matched_by_seed_and_missing_values_skipped():
    p = paired({0: 3.0, 1: 5.0, 2: None, 3: 1.0}, {1: 1.0, 0: 2.0, 2: 0.0, 4: 9.0})
    assert p.diffs == (1.0, 4.0) and p.mean == 2.5
    single = paired({0: 3.0}, {0: 1.0})
    assert single.mean == 2.0 and single.low is None and verdict(single, 1) == "INCONCLUSIVE"


@pytest.mark.parametrize("low, high, better, margin, expected", [
    (0.1, 0.5, 1, 0.0, "SUPPORTED"),
    (-0.5, -0.1, 1, 0.0, "CONTRADICTED"),
    (-0.1, 0.5, 1, 0.0, "INCONCLUSIVE"),
    (-0.5, -0.1, -1, 0.0, "SUPPORTED"),      # lower is better
    (0.1, 0.5, -1, 0.0, "CONTRADICTED"),
    (-0.008, 0.01, 1, 0.01, "SUPPORTED"),    # non-inferiority: at most 1 point lower
    (-0.03, -0.012, 1, 0.01, "CONTRADICTED"),
    (-0.02, 0.01, 1, 0.01, "INCONCLUSIVE"),
    (-0.2, 0.15, -1, 0.2, "SUPPORTED"),      # lower is better, at most 0.2 worse
])
def test_verdicts_come_from_the_interval(low, high, better, margin, expected):
    assert verdict(Paired((0.0, 0.0), (low + high) / 2, low, high), better, margin) == expected


def test_verdict_rejects_bad_arguments():
    with pytest.raises(ValueError):
        verdict(Paired((), None, None, None), 0)
    with pytest.raises(ValueError):
        verdict(Paired((), None, None, None), 1, -0.1)
