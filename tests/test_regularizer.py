"""MarginalDensityRegularizer: the loss is mean CE + weight * mean penalty, logits shared, stats floats.

Reference values are recomputed with the public functional API in float64, where the fused head
and F.cross_entropy agree to ~1e-15; the 1e-12 relative tolerance leaves margin for summation order
(1e-10 for parameter gradients, which sum over more terms).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from margreg_fast._estimators import ESTIMATOR_NAMES, PENALTY_KINDS
from margreg_fast.kit import models
from margreg_fast._penalty import input_gradient_penalty, marginal_density_penalty
from margreg_fast._regularizer import MarginalDensityRegularizer
from tests.gradients import parameter_gradient


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its forward calls (to check the logits are computed once)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = models.SmallCNN(width=4, image_size=8, activation="silu").double()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (5,), generator=gen)
    return model, x, y


#: A fixed h: the regulariser and the reference compute the same penalty in another order, and their
#: float64 rounding differences, divided by the tiny fd "auto" step, would exceed the 1e-10 bound.
STEP = 1e-2


@pytest.mark.parametrize("method", ESTIMATOR_NAMES)
@pytest.mark.parametrize("penalty", PENALTY_KINDS)
def test_loss_is_ce_plus_weighted_penalty(setup, penalty, method):
    """Every estimator and penalty, on a batch with an unlabelled sample (label -100): the CE follows
    F.cross_entropy (mean over the labelled samples), the marginal penalty is averaged over every
    sample and the labelled penalties over the labelled ones; loss, stats and parameter gradient
    equal those built by hand from the public functions."""
    model, x, y = setup
    y = y.clone()
    y[1] = -100
    keep = y != -100
    torch.manual_seed(0)  # rfd's random signs: the same draw in both calls
    loss, stats = MarginalDensityRegularizer(0.7, estimator=method, step=STEP, penalty_kind=penalty)(model, x, y)
    ce = F.cross_entropy(model(x), y)  # ignore_index=-100
    torch.manual_seed(0)
    if penalty == "marginal":  # defined for every sample
        pen = marginal_density_penalty(model, x, estimator=method, step=STEP)
    else:  # per sample over the whole batch, averaged over the labelled ones by hand
        per_sample = input_gradient_penalty(model, x, y, penalty_kind=penalty, estimator=method, step=STEP, reduction="none")
        pen = per_sample[keep].mean()
    assert set(stats) == {"ce", "penalty", "grad_norm", "secant_ratio"}
    assert all(type(v) is float for v in stats.values())
    assert math.isclose(stats["ce"], ce.item(), rel_tol=1e-12)
    assert math.isclose(stats["penalty"], pen.item(), rel_tol=1e-12)
    assert math.isclose(loss.item(), (ce + 0.7 * pen).item(), rel_tol=1e-12)
    torch.testing.assert_close(parameter_gradient(model, loss), parameter_gradient(model, ce + 0.7 * pen),
                               rtol=1e-10, atol=1e-14)


def test_grad_norm_is_mean_input_gradient_norm(setup):
    model, x, y = setup
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.logsumexp(model(xg), 1).sum(), xg)
    expected = g.flatten(1).norm(dim=1).mean().item()
    for method in ("exact", "fd"):
        _, stats = MarginalDensityRegularizer(1.0, estimator=method)(model, x, y)
        assert math.isclose(stats["grad_norm"], expected, rel_tol=1e-12)


@pytest.mark.parametrize("method, forwards", [("rfd", 2), ("fd", 2), ("central", 3), ("exact", 1)])
def test_logits_of_x_computed_once(setup, method, forwards):
    model, x, y = setup
    counting = CountingModel(model)
    MarginalDensityRegularizer(1.0, estimator=method)(counting, x, y)
    assert counting.calls == forwards  # x once (shared by CE and grad_x), plus x + s h v (central: x - h v and x + h v)


def test_plain_ce_and_inputs_untouched(setup):
    model, x, y = setup
    loss, stats = MarginalDensityRegularizer(3.0, penalty_kind="none")(model, x, y)
    assert loss.item() == F.cross_entropy(model(x), y).item()
    assert stats["penalty"] == 0.0 and math.isnan(stats["grad_norm"])
    MarginalDensityRegularizer(1.0)(model, x, y)
    assert not x.requires_grad and x.grad is None


def test_weight_zero_gives_ce_gradient(setup):
    model, x, y = setup
    loss, _ = MarginalDensityRegularizer(0.0)(model, x, y)
    g_reg = torch.autograd.grad(loss, list(model.parameters()))
    g_ce = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(g_reg, g_ce))


@pytest.mark.parametrize("kwargs", [dict(weight=-1.0), dict(weight=float("nan")), dict(weight=1.0, estimator="hvp"),
                                    dict(weight=1.0, penalty_kind="l2"), dict(weight=1.0, step=-1e-2),
                                    dict(weight=1.0, backend="gpu")])
def test_bad_construction(kwargs):
    with pytest.raises(ValueError):
        MarginalDensityRegularizer(**kwargs)


def test_bad_call(setup):
    model, x, y = setup
    reg = MarginalDensityRegularizer(1.0)
    with pytest.raises(ValueError, match="y must hold one label per sample"):
        reg(model, x, y[:2])
    with pytest.raises(TypeError, match="x must be"):
        reg(model, x.long(), y)
