"""Judge an estimator by the model it trains: can training game it? (margreg_fast.kit.estimator_training)

Small max-pool CNNs (ReLU, and GELU as the smooth activation) train for 8 epochs at weight 10 on
8x8 digits placed on a zero 20x20 canvas, where max-pool windows hold exact ties. Afterwards, on
held-out images, the true penalty (exact R) must be within 3x what an exact-trained twin reaches,
and the regulariser's secant monitor must stay quiet.

The default estimator, rfd, is held to those two checks only: its own estimate is ||g||^2, the true
R itself, so "true R / own estimate" is 1 by construction and tells nothing about it. What can fail
for rfd is the model its parameter gradient trains (the twin ratio) and the secant slope that the
monitor watches. fd, whose estimate is its secant squared, is held to the own-estimate check too.
Before the probes replayed the clean pass's activation patterns (margreg_fast/_estimators/patterns.py)
training gamed fd through the ReLU kinks and max-pool ties its one-sided probe crossed (true R 12-25x
its estimate, the monitor warning); with the patterns replayed its secant is the slope of x's piece
up to O(h), and it passes the same checks (benchmarks/results/estimator_training.md).
"""
import pytest

from margreg_fast._estimators import DEFAULT_ESTIMATOR
from margreg_fast.kit.estimator_training import canvas_digits, judge

#: Stated in the issue that asked for this test; both are about training outcome, not init.
MAX_TRUE_OVER_OWN, MAX_TRUE_OVER_TWIN = 1.5, 3.0


@pytest.fixture(scope="module")
def data():
    return canvas_digits()


@pytest.fixture(scope="module")
def twins(data):
    """The exact-trained twin's outcome, per activation."""
    return {act: judge("exact", act, data) for act in ("relu", "gelu")}


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_default_estimator_trains_what_exact_trains(data, twins, activation):
    got = judge(DEFAULT_ESTIMATOR, activation, data)
    assert got.over_twin(twins[activation]) <= MAX_TRUE_OVER_TWIN, f"{got.over_twin(twins[activation]):.2f}x the twin"
    assert not got.warned, got


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_fd_with_replayed_patterns_is_not_gamed(data, twins, activation):
    got = judge("fd", activation, data)
    assert got.true_over_own <= MAX_TRUE_OVER_OWN and got.over_twin(twins[activation]) <= MAX_TRUE_OVER_TWIN, got
    assert not got.warned and 0.8 <= got.secant_ratio <= 1.25, got
