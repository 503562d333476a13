"""One entry per estimator (margreg_fast/estimators/registry.py), and the places that read it."""
import pytest

import margreg_fast
from margreg_fast.estimators.registry import ESTIMATORS, ESTIMATOR_NAMES, STEPLESS
from margreg_fast.kit.experiments.config import STEPLESS_ESTIMATORS
from margreg_fast.monitor import SecantMonitor


def test_the_registry_is_the_list_of_estimators_everywhere():
    assert ESTIMATOR_NAMES == tuple(margreg_fast.ESTIMATORS) == tuple(ESTIMATORS) == ("exact", "jvp", "fd", "central", "rfd")
    assert all(name == entry.name for name, entry in ESTIMATORS.items())
    assert margreg_fast.ESTIMATORS is ESTIMATORS
    assert STEPLESS_ESTIMATORS == STEPLESS == ("exact", "jvp")


def test_what_each_estimator_is():
    assert [n for n, e in ESTIMATORS.items() if e.double_backward] == ["exact"]
    assert [n for n, e in ESTIMATORS.items() if e.forward_mode] == ["jvp"]
    assert [n for n, e in ESTIMATORS.items() if e.exact_value] == ["exact", "jvp", "rfd"]
    assert {n: e.order for n, e in ESTIMATORS.items() if e.takes_step} == {"fd": 1, "central": 2, "rfd": 2}


@pytest.mark.parametrize("method", ESTIMATOR_NAMES)
def test_the_monitor_gives_the_registrys_advice_for_a_low_ratio(method):
    advice = ESTIMATORS[method].low_ratio_advice
    got = SecantMonitor(method, window=1, warmup=0)._advice(0.1)
    assert got == advice if advice else "step h" in got
