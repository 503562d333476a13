"""Unlabelled samples (label -100, F.cross_entropy's ignore_index): one behaviour for every penalty.

(The regulariser's loss on such a batch, for every method and penalty: tests/test_regularizer.py.)

The CE follows F.cross_entropy (0 per unlabelled sample, mean over the labelled ones); the marginal
penalty needs no label and is defined and averaged over every sample; the conditional and joint
penalties are 0 on unlabelled samples and averaged over the labelled ones. Per-sample penalties do
not depend on the other samples of the batch (no BatchNorm here), so the labelled rows must equal
the penalty of the labelled sub-batch alone. Float64 throughout: 1e-12 relative covers summation order.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from margreg_fast._estimators import ESTIMATOR_NAMES
from margreg_fast._penalty import BASELINES as KINDS
from margreg_fast._penalty import input_gradient_penalty
from margreg_fast._regularizer import MarginalDensityRegularizer
from tests.gradients import parameter_gradient


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(7, 6, generator=gen, dtype=torch.float64)
    y = torch.tensor([1, -100, 3, 0, -100, 2, 1])
    return model, x, y


#: A fixed h: the batch and the labelled sub-batch compute the same penalty in another order, and
#: their float64 rounding differences, divided by the tiny fd "auto" step, would exceed the bounds.
STEP = 1e-2


@pytest.mark.parametrize("method", ESTIMATOR_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_labelled_penalties_skip_unlabelled_samples(batch, kind, method):
    model, x, y = batch
    keep = y != -100
    kw = dict(penalty_kind=kind, estimator=method, step=STEP)
    signs = lambda: torch.Generator().manual_seed(0)  # noqa: E731  (rfd: the same draw per position)
    per = input_gradient_penalty(model, x, y, reduction="none", generator=signs(), **kw)
    alone = input_gradient_penalty(model, x[keep], y[keep], reduction="none", **kw)
    assert torch.equal(per[~keep], torch.zeros(2, dtype=per.dtype))
    torch.testing.assert_close(per[keep], alone, rtol=1e-12, atol=0)
    mean = input_gradient_penalty(model, x, y, generator=signs(), **kw)
    assert math.isclose(mean.item(), alone.mean().item(), rel_tol=1e-12)
    assert math.isclose(input_gradient_penalty(model, x, y, reduction="sum", **kw).item(), alone.sum().item(),
                        rel_tol=1e-12)
    # The mean's gradient is that of the labelled samples' mean. rfd's gradient depends on each
    # sample's sign, drawn by position: the sub-batch draws others, so it is compared on the batch.
    want = per[keep].mean() if method == "rfd" else alone.mean()
    torch.testing.assert_close(parameter_gradient(model, mean), parameter_gradient(model, want), rtol=1e-10, atol=1e-14)


def test_plain_cross_entropy_ignores_unlabelled_samples(batch):
    model, x, y = batch
    loss, stats = MarginalDensityRegularizer(1.0, penalty_kind="none")(model, x, y)
    assert loss.item() == F.cross_entropy(model(x), y).item() == stats["ce"]


def test_other_negative_labels_are_not_ignored(batch):
    model, x, _ = batch
    with pytest.raises((ValueError, IndexError, RuntimeError), match="-5|out of bounds"):
        MarginalDensityRegularizer(1.0, estimator="fd")(model, x, torch.tensor([1, -5, 3, 0, 1, 2, 1]))
