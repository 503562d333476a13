"""Any loss on the shared logits: ``reg(model, x, target, criterion=...)`` and ``reg.logits_and_penalty``.

Reference: the user's loss on ``model(x)`` plus ``weight * marginal_density_penalty`` computed
separately by the public function (the workaround the issue describes). Float64 throughout; both
sides compute the same quantities in another order, so values agree to 1e-12 relative and
parameter gradients (sums over more terms) to 1e-10, as in tests/test_regularizer.py. rfd's random
signs are drawn from the same seed on both sides; a fixed step (1e-2) keeps the float64 rounding
of the two orders, divided by h, far below those bounds.

With ``fraction`` < 1 the reference draws the same subset from a clone of the regulariser's
generator and uses ``estimator="exact"`` (no random signs, so the draw order does not matter).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from margreg_fast import MarginalDensityRegularizer, input_gradient_penalty, marginal_density_penalty
from margreg_fast.kit import models
from margreg_fast._subsample import draw_subset
from tests.gradients import parameter_gradient
from tests.timm_import import import_timm

C, B, W = 10, 8, 0.7
STEP = 1e-2


def _model():
    torch.manual_seed(0)
    return models.SmallCNN(width=4, image_size=8, activation="silu").double()


def _batch():
    gen = torch.Generator().manual_seed(3)
    return torch.rand(B, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, C, (B,), generator=gen)


def _mixup(x, y):
    """timm's own Mixup / CutMix with label smoothing (its training script's defaults): soft targets (B, C)."""
    import_timm()
    from timm.data import Mixup

    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=C)
    torch.manual_seed(5)  # the cutmix box comes from numpy, the mixup order from torch: both fixed here
    import numpy as np
    np.random.seed(5)
    x_mixed, soft = mix(x.clone(), y)
    return x_mixed, soft.double()


def _soft_target_ce():
    import_timm()
    from timm.loss import SoftTargetCrossEntropy

    return SoftTargetCrossEntropy()


CLASS_WEIGHTS = torch.linspace(0.5, 2.0, C, dtype=torch.float64)

#: name -> (criterion, target transform (x, y) -> (x, target)).
CRITERIA = {
    "label_smoothing": (lambda: (lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1)), lambda x, y: (x, y)),
    "timm_mixup": (_soft_target_ce, _mixup),
    "class_weighted": (lambda: (lambda z, t: F.cross_entropy(z, t, weight=CLASS_WEIGHTS)), lambda x, y: (x, y)),
    "ignores_target": (lambda: (lambda z, _t: z.pow(2).mean()), lambda x, y: (x, None)),
}


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_plus_penalty_equals_the_reference(name):
    """Fraction 1: loss, stats and parameter gradient equal criterion(model(x), target) + w * MDR(x)."""
    make_criterion, transform = CRITERIA[name]
    model, criterion = _model(), make_criterion()
    x, target = transform(*_batch())
    torch.manual_seed(0)
    loss, stats = MarginalDensityRegularizer(W, step=STEP)(model, x, target, criterion=criterion)
    torch.manual_seed(0)
    data = criterion(model(x), target)
    ref = data + W * marginal_density_penalty(model, x, step=STEP)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-12)
    assert math.isclose(stats["ce"], data.item(), rel_tol=1e-12)
    torch.testing.assert_close(parameter_gradient(model, loss), parameter_gradient(model, ref), rtol=1e-10, atol=1e-14)


def _subset_reference(model, x, target, criterion, fraction, seed):
    """criterion(model(x), target) + w * (mean exact MDR over the subset the regulariser draws)."""
    idx = draw_subset(x.shape[0], fraction, x.device, torch.Generator().manual_seed(seed))
    return criterion(model(x), target) + W * marginal_density_penalty(model, x[idx], estimator="exact")


@pytest.mark.parametrize("name", CRITERIA)
def test_sample_wise_split_gives_the_criterion_the_batch_in_its_order(name):
    """fraction 0.5 on a model without BatchNorm: two forwards (subset, rest); the criterion sees their
    logits put back in the batch's order, so per-sample targets (mixup's rows, class weights) match."""
    make_criterion, transform = CRITERIA[name]
    model, criterion = _model(), make_criterion()
    x, target = transform(*_batch())
    reg = MarginalDensityRegularizer(W, estimator="exact", fraction=0.5, generator=torch.Generator().manual_seed(11))
    loss, _ = reg(model, x, target, criterion=criterion)
    ref = _subset_reference(model, x, target, criterion, 0.5, 11)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-12)
    torch.testing.assert_close(parameter_gradient(model, loss), parameter_gradient(model, ref), rtol=1e-10, atol=1e-14)


def test_a_criterion_that_reads_row_order_fails_on_shuffled_logits():
    """The order test above can fail: a criterion weighting each row by its position differs between the
    batch order and the subset-then-rest order that the two forwards produce."""
    model = _model()
    x, y = _batch()
    position = torch.arange(1, B + 1, dtype=torch.float64)
    criterion = lambda z, t: (F.cross_entropy(z, t, reduction="none") * position).mean()  # noqa: E731
    reg = MarginalDensityRegularizer(W, estimator="exact", fraction=0.5, generator=torch.Generator().manual_seed(11))
    loss, _ = reg(model, x, y, criterion=criterion)
    ref = _subset_reference(model, x, y, criterion, 0.5, 11)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-12)
    idx = draw_subset(B, 0.5, x.device, torch.Generator().manual_seed(11))
    shuffled = torch.cat([idx, torch.tensor([i for i in range(B) if i not in idx.tolist()])])
    assert not torch.equal(shuffled, torch.arange(B))  # the split does reorder the rows
    wrong = criterion(model(x[shuffled]), y) + W * marginal_density_penalty(model, x[idx], estimator="exact")
    assert not math.isclose(wrong.item(), ref.item(), rel_tol=1e-6)


class BatchNormNet(nn.Module):
    """A train-mode BatchNorm couples the batch: fraction < 1 runs one forward of all B samples."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, C))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("name", ["label_smoothing", "timm_mixup"])
def test_coupled_model_criterion_reads_the_one_forward(name):
    """fraction 0.5 on a BatchNorm model: the criterion's logits are the ordinary train-mode forward of
    the whole batch; the penalty (same subset, same seed) is the default path's, so the two losses
    differ by exactly criterion(z) - CE(z)."""
    make_criterion, transform = CRITERIA[name]
    criterion = make_criterion()
    x, y = _batch()
    x, target = transform(x, y)
    torch.manual_seed(0)
    net = BatchNormNet().double()
    reference_net = BatchNormNet().double()
    reference_net.load_state_dict(net.state_dict())
    z = reference_net(x)  # one train-mode forward, as the regulariser's clean pass
    losses = {}
    for key, crit, tgt in (("criterion", criterion, target), ("ce", None, y)):
        model = BatchNormNet().double()
        model.load_state_dict(net.state_dict())
        reg = MarginalDensityRegularizer(W, estimator="exact", fraction=0.5, generator=torch.Generator().manual_seed(2))
        losses[key], _ = reg(model, x, tgt, criterion=crit)
        torch.testing.assert_close(model.body[2].running_mean, reference_net.body[2].running_mean, rtol=0, atol=0)
    expected = losses["ce"] + criterion(z, target) - F.cross_entropy(z, y)
    assert math.isclose(losses["criterion"].item(), expected.item(), rel_tol=1e-12)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_logits_and_penalty_are_the_forward_and_the_unweighted_mean_penalty(fraction):
    """logits: model(x) row by row, in the batch's order, for every fraction; penalty: the mean penalty
    (subset mean at fraction < 1), the weight not applied, differentiable; the monitor updates."""
    model = _model()
    x, y = _batch()
    reg = MarginalDensityRegularizer(W, estimator="exact", fraction=fraction, generator=torch.Generator().manual_seed(4))
    logits, penalty = reg.logits_and_penalty(model, x)
    torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-14)
    idx = draw_subset(B, fraction, x.device, torch.Generator().manual_seed(4))
    ref = marginal_density_penalty(model, x[idx], estimator="exact")
    assert math.isclose(penalty.item(), ref.item(), rel_tol=1e-12)
    torch.testing.assert_close(parameter_gradient(model, F.cross_entropy(logits, y) + W * penalty),
                               parameter_gradient(model, F.cross_entropy(model(x), y) + W * ref), rtol=1e-10, atol=1e-14)
    assert reg.monitor.steps == 1
    assert set(reg.last_stats) == {"penalty", "grad_norm", "secant_ratio"}
    assert math.isclose(reg.last_stats["penalty"], ref.item(), rel_tol=1e-12)


def test_logits_and_penalty_equal_the_criterion_call():
    """One way per job, two entry points that agree: its_loss(logits) + w * penalty == reg(..., criterion)."""
    model = _model()
    x, y = _batch()
    criterion = lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1)  # noqa: E731
    torch.manual_seed(1)
    logits, penalty = MarginalDensityRegularizer(W, step=STEP).logits_and_penalty(model, x)
    torch.manual_seed(1)
    loss, _ = MarginalDensityRegularizer(W, step=STEP)(model, x, y, criterion=criterion)
    assert math.isclose((criterion(logits, y) + W * penalty).item(), loss.item(), rel_tol=1e-12)


def test_logits_and_penalty_refuses_labelled_penalties_and_gives_zero_for_none():
    model = _model()
    x, _ = _batch()
    for penalty in ("conditional", "joint"):
        with pytest.raises(ValueError, match="needs them.*penalty_kind='marginal'"):
            MarginalDensityRegularizer(W, penalty_kind=penalty).logits_and_penalty(model, x)
    logits, zero = MarginalDensityRegularizer(W, penalty_kind="none").logits_and_penalty(model, x)
    assert zero.item() == 0.0 and zero.dim() == 0
    torch.testing.assert_close(logits, model(x), rtol=0, atol=0)


def test_labelled_penalty_with_a_criterion_reads_the_integer_target():
    """penalty_kind="conditional" with a label-smoothed CE: the criterion and ||grad_x CE(f(x), y)||^2 both read y."""
    model = _model()
    x, y = _batch()
    criterion = lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1)  # noqa: E731
    torch.manual_seed(0)
    loss, _ = MarginalDensityRegularizer(W, step=STEP, penalty_kind="conditional")(model, x, y, criterion=criterion)
    torch.manual_seed(0)
    ref = criterion(model(x), y) + W * input_gradient_penalty(model, x, y, penalty_kind="conditional", step=STEP)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-12)


@pytest.mark.parametrize("penalty", ["conditional", "joint"])
def test_labelled_penalty_refuses_soft_targets(penalty):
    model = _model()
    x, y = _batch()
    soft = F.one_hot(y, C).double()
    reg = MarginalDensityRegularizer(W, penalty_kind=penalty)
    with pytest.raises(TypeError, match=f"penalty_kind='{penalty}' is defined on integer class labels.*penalty_kind='marginal'"):
        reg(model, x, soft, criterion=lambda z, t: -(t * z.log_softmax(1)).sum(1).mean())


def test_criterion_must_return_a_scalar_and_be_callable():
    model = _model()
    x, y = _batch()
    reg = MarginalDensityRegularizer(W)
    with pytest.raises(ValueError, match=r"must return a scalar loss.*shape \(8,\)"):
        reg(model, x, y, criterion=lambda z, t: F.cross_entropy(z, t, reduction="none"))
    with pytest.raises(TypeError, match="criterion must be None or a callable"):
        reg(model, x, y, criterion="cross_entropy")
    with pytest.raises(ValueError, match="must return a scalar loss"):
        MarginalDensityRegularizer(W, penalty_kind="none")(model, x, y, criterion=lambda z, t: z)


def test_default_criterion_is_the_cross_entropy_with_ignore_index():
    """criterion=None and an explicit F.cross_entropy give one loss and one gradient (fused or not)."""
    model = _model()
    x, y = _batch()
    y[2] = -100
    torch.manual_seed(0)
    default, _ = MarginalDensityRegularizer(W, step=STEP)(model, x, y)
    torch.manual_seed(0)
    explicit, _ = MarginalDensityRegularizer(W, step=STEP)(model, x, y, criterion=F.cross_entropy)
    assert math.isclose(default.item(), explicit.item(), rel_tol=1e-12)
    torch.testing.assert_close(parameter_gradient(model, default), parameter_gradient(model, explicit),
                               rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_logits_and_penalty_without_grad_are_values(fraction):
    """Under torch.no_grad() (a validation step) both outputs are detached, with the values of grad mode."""
    model = _model()
    x, _ = _batch()
    reg = MarginalDensityRegularizer(W, estimator="exact", fraction=fraction, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, penalty = reg.logits_and_penalty(model, x)
    assert not logits.requires_grad and not penalty.requires_grad
    reg.generator.manual_seed(4)
    want_logits, want_penalty = reg.logits_and_penalty(model, x)
    torch.testing.assert_close(logits, want_logits.detach(), rtol=1e-12, atol=1e-14)
    assert math.isclose(penalty.item(), want_penalty.item(), rel_tol=1e-12)
