"""One entry per estimator (margreg_fast/_estimators/registry.py), and the places that read it."""
import pytest

import margreg_fast
from margreg_fast._estimators.registry import ESTIMATORS, ESTIMATOR_NAMES, STEPLESS
from margreg_fast.kit.experiments.config import STEPLESS_ESTIMATORS
from margreg_fast._monitor import SecantMonitor


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


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_the_core_reads_the_entry_not_the_name(name, monkeypatch):
    """An entry copied under a new name estimates exactly what the original does: the core branches on
    the registry's fields (secant, random sign, exact value, ...), so a new estimator is one entry."""
    import dataclasses

    import torch
    from torch import nn

    from margreg_fast._estimators import estimate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    monkeypatch.setitem(ESTIMATORS, "copy", dataclasses.replace(ESTIMATORS[name], name="copy"))
    got = {}
    for which in (name, "copy"):
        est = estimate(model, x, None, penalty_kind="marginal", estimator=which, step="auto",
                       generator=torch.Generator().manual_seed(3))
        (grad,) = torch.autograd.grad(est.value.sum(), model[0].weight)
        got[which] = (est.value.detach(), est.slope, grad)
    assert all(torch.equal(a, b) for a, b in zip(got[name], got["copy"]))


def test_an_entry_must_be_consistent():
    from margreg_fast._estimators.registry import Estimator

    common = dict(double_backward=False, forward_mode=False, exact_value=False, exact_gradient=False)
    with pytest.raises(ValueError, match="secant must be one of"):
        Estimator("x", order=1, secant="backward", **common)
    with pytest.raises(ValueError, match="goes with an order"):
        Estimator("x", order=None, secant="forward", **common)
    with pytest.raises(ValueError, match="goes with an order"):
        Estimator("x", order=2, **common)
    with pytest.raises(ValueError, match="random sign needs a secant"):
        Estimator("x", order=None, random_sign=True, **common)
