"""The regulariser's ``fraction``: penalty on a random subset, CE on the whole batch, expectation kept.

Float64 throughout; exact is the reference estimator. Averaged over every subset the subset's
penalty term equals the whole batch's mean penalty (value and parameter gradient), so those checks
hold to summation-order rounding (1e-10 relative). Train-mode BatchNorm normalises the subset with
the whole batch's statistics, so each subset sample's penalty is the one it has at fraction 1. A
model without batch coupling splits the batch in two forwards, which must give the loss and gradient
of one forward of the whole batch (to 1e-12 relative: the same sums in another order).
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from margreg_fast import _regularizer as regularizer_module
from margreg_fast._estimators import ESTIMATOR_NAMES
from margreg_fast._estimators.passes import HeldStatisticsError, couples_batch
from margreg_fast.kit import models
from margreg_fast._penalty import marginal_density_penalty
from margreg_fast._regularizer import MarginalDensityRegularizer
from margreg_fast._subsample import complement, draw_subset, subset_size
from tests.gradients import rows_of_each_forward


def _bn_model():
    torch.manual_seed(0)
    return models.SmallCNN(width=4, image_size=8, activation="silu", batchnorm=True).double()


def _data(batch=6, unlabelled=()):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(batch, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (batch,), generator=gen)
    y[list(unlabelled)] = -100
    return x, y


def _loss_and_grads(model, reg, x, y):
    loss, stats = reg(model, x, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), stats, torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("penalty,unlabelled", [("marginal", ()), ("marginal", (1,)), ("conditional", (1, 4)),
                                                ("joint", (2,))])
def test_average_over_all_subsets_equals_fraction_one(monkeypatch, penalty, unlabelled):
    model, (x, y) = _bn_model(), _data(unlabelled=unlabelled)
    full_loss, _, full_grad = _loss_and_grads(model, MarginalDensityRegularizer(0.7, estimator="exact", penalty_kind=penalty),
                                              x, y)
    reg = MarginalDensityRegularizer(0.7, estimator="exact", penalty_kind=penalty, fraction=0.5)
    subsets = list(itertools.combinations(range(x.shape[0]), subset_size(x.shape[0], 0.5)))
    losses, grads = [], []
    for subset in subsets:
        monkeypatch.setattr(regularizer_module, "draw_subset", lambda *args, s=subset: torch.tensor(s))
        loss, _, grad = _loss_and_grads(model, reg, x, y)
        losses.append(loss)
        grads.append(grad)
    assert math.isclose(torch.stack(losses).mean().item(), full_loss.item(), rel_tol=1e-10)
    mean_grad = torch.stack(grads).mean(0)
    assert (mean_grad - full_grad).abs().max() <= 1e-10 * full_grad.abs().max()


def test_subset_penalties_are_the_whole_batch_ones_under_train_mode_batchnorm(monkeypatch):
    """BatchNorm normalises the subset with the whole batch's statistics, not the subset's own."""
    model, (x, y) = _bn_model(), _data()
    per_sample = marginal_density_penalty(model, x, estimator="exact", reduction="none")
    subset = torch.tensor([4, 1])
    monkeypatch.setattr(regularizer_module, "draw_subset", lambda *args: subset)
    reg = MarginalDensityRegularizer(1.0, estimator="exact", fraction=2 / 6)
    _, stats = reg(model, x, y)
    assert math.isclose(stats["penalty"], per_sample[subset].mean().item(), rel_tol=1e-12)
    own_statistics = marginal_density_penalty(model, x[subset], estimator="exact").item()
    assert not math.isclose(stats["penalty"], own_statistics, rel_tol=1e-3)  # the check can tell them apart


def test_ce_covers_the_whole_batch_and_updates_running_statistics_once():
    model, (x, y) = _bn_model(), _data()
    plain = _bn_model()
    reg = MarginalDensityRegularizer(0.0, fraction=0.25)
    loss, stats = reg(model, x, y)
    ce = F.cross_entropy(plain(x), y)
    assert math.isclose(stats["ce"], ce.item(), rel_tol=1e-12) and math.isclose(loss.item(), ce.item(), rel_tol=1e-12)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    plain_grads = torch.autograd.grad(ce, list(plain.parameters()))
    for g, p in zip(grads, plain_grads):
        assert torch.allclose(g if g is not None else torch.zeros_like(p), p, rtol=1e-10, atol=1e-12)
    for a, b in zip(model.buffers(), plain.buffers()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ESTIMATOR_NAMES)
def test_every_estimator_runs_on_the_subset_and_agrees_with_exact(monkeypatch, method):
    model, (x, y) = _bn_model(), _data()
    monkeypatch.setattr(regularizer_module, "draw_subset", lambda *args: torch.tensor([0, 3, 5]))
    reference = MarginalDensityRegularizer(1.0, estimator="exact", fraction=0.5)(model, x, y)[1]["penalty"]
    torch.manual_seed(0)
    loss, stats = MarginalDensityRegularizer(1.0, estimator=method, fraction=0.5, step=1e-4)(model, x, y)
    loss.backward()
    assert math.isfinite(loss.item())
    assert math.isclose(stats["penalty"], reference, rel_tol=1e-3), (stats, reference)  # O(h) for fd at h = 1e-4


def test_dropout_masks_are_shared_by_the_subset_passes(monkeypatch):
    """Every pass over the subset replays one draw: rfd's secant measures the gradient of that network."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(32, 10)).double()
    x, y = _data(batch=8)
    monkeypatch.setattr(regularizer_module, "draw_subset", lambda *args: torch.tensor([1, 2, 6, 7]))
    torch.manual_seed(1)
    exact = MarginalDensityRegularizer(1.0, estimator="exact", fraction=0.5)(model, x, y)[1]
    torch.manual_seed(1)
    rfd = MarginalDensityRegularizer(1.0, estimator="rfd", fraction=0.5, step=1e-4)(model, x, y)[1]
    assert math.isclose(rfd["penalty"], exact["penalty"], rel_tol=1e-12)  # rfd's value is the exact one
    assert abs(rfd["secant_ratio"] - 1) <= 1e-3


def test_subset_draw_is_uniform_without_replacement_and_follows_the_generator():
    batch, fraction = 8, 0.25
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(batch)
    draws = 4000
    for _ in range(draws):
        idx = draw_subset(batch, fraction, torch.device("cpu"), gen)
        assert idx.shape == (2,) and idx.unique().numel() == 2
        counts[idx] += 1
    expected = draws * 2 / batch
    assert (counts - expected).abs().max() <= 5 * math.sqrt(expected)  # 5 sigma of a binomial count
    a = draw_subset(batch, fraction, torch.device("cpu"), torch.Generator().manual_seed(7))
    b = draw_subset(batch, fraction, torch.device("cpu"), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("batch,fraction,size", [(64, 0.25, 16), (8, 0.125, 1), (3, 0.1, 1), (10, 0.25, 2),
                                                 (5, 1.0, 5)])
def test_subset_size_is_max_one_round(batch, fraction, size):
    assert subset_size(batch, fraction) == size


def test_generator_makes_the_step_reproducible():
    model, (x, y) = _bn_model(), _data()
    runs = [MarginalDensityRegularizer(1.0, fraction=0.5, generator=torch.Generator().manual_seed(1))(model, x, y)[0]
            for _ in range(2)]
    assert runs[0].item() == runs[1].item()


@pytest.mark.parametrize("fraction,error", [(0, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                            (-0.1, ValueError), ("0.5", TypeError), (True, TypeError)])
def test_bad_fraction_raises(fraction, error):
    with pytest.raises(error, match="fraction"):
        MarginalDensityRegularizer(1.0, fraction=fraction)


def test_bad_generator_raises():
    with pytest.raises(TypeError, match="generator"):
        MarginalDensityRegularizer(1.0, generator=0)


def test_compiled_model_with_fraction_matches_eager(monkeypatch):
    model, (x, y) = _bn_model(), _data()
    monkeypatch.setattr(regularizer_module, "draw_subset", lambda *args: torch.tensor([2, 5]))
    eager = MarginalDensityRegularizer(1.0, estimator="rfd", fraction=0.3, generator=torch.Generator().manual_seed(0))
    compiled = MarginalDensityRegularizer(1.0, estimator="rfd", fraction=0.3, generator=torch.Generator().manual_seed(0))
    _, e_stats, e_grad = _loss_and_grads(model, eager, x, y)
    _, c_stats, c_grad = _loss_and_grads(torch.compile(model), compiled, x, y)
    assert math.isclose(e_stats["penalty"], c_stats["penalty"], rel_tol=1e-9)
    assert (e_grad - c_grad).abs().max() <= 1e-9 * e_grad.abs().max()


def test_compiled_cnn_with_fraction_matches_eager_across_recompiles():
    """The subset's batch size recompiles the model with dynamic shapes; its retained input-gradient
    graph must keep its saved tensors (a donated buffer would be refused, or read after being freed)."""
    torch.manual_seed(0)
    model = models.SmallCNN(width=4, image_size=8, activation="silu").double()
    compiled = torch.compile(model)
    x, y = _data(batch=8)
    for fraction in (1.0, 0.25, 0.5):
        runs = [_loss_and_grads(net, MarginalDensityRegularizer(1.0, fraction=fraction,
                                                                generator=torch.Generator().manual_seed(4)), x, y)
                for net in (model, compiled)]
        (e_loss, _, e_grad), (c_loss, _, c_grad) = runs
        assert math.isclose(e_loss.item(), c_loss.item(), rel_tol=1e-9), fraction
        assert (e_grad - c_grad).abs().max() <= 1e-9 * e_grad.abs().max(), fraction


def _sample_wise_model():
    torch.manual_seed(0)
    return models.SmallCNN(width=4, image_size=8, activation="silu").double()


@pytest.mark.parametrize("method", ESTIMATOR_NAMES)
@pytest.mark.parametrize("penalty,unlabelled", [("marginal", (2,)), ("conditional", (1, 4)), ("joint", ())])
def test_split_batch_equals_one_forward_of_the_whole_batch(method, penalty, unlabelled):
    """Sample-wise model: the subset's forward serving its CE and the penalty, plus the rest's, give the
    loss and parameter gradient of the whole batch's forward (float64; only summation order differs)."""
    model, (x, y) = _sample_wise_model(), _data(batch=8, unlabelled=unlabelled)
    runs = [_loss_and_grads(model, MarginalDensityRegularizer(0.7, estimator=method, penalty_kind=penalty, fraction=0.25,
                                                              batch_coupled=coupled, step=1e-3,
                                                              generator=torch.Generator().manual_seed(3)), x, y)
            for coupled in (True, False)]
    (one_loss, one_stats, one_grad), (split_loss, split_stats, split_grad) = runs
    assert math.isclose(split_loss.item(), one_loss.item(), rel_tol=1e-12)
    assert math.isclose(split_stats["ce"], one_stats["ce"], rel_tol=1e-12)
    assert split_stats["penalty"] == pytest.approx(one_stats["penalty"], rel=1e-12)
    assert (split_grad - one_grad).abs().max() <= 1e-12 * one_grad.abs().max()


def test_split_batch_forwards_each_sample_once_outside_the_probes():
    """What makes the sample-wise step cheaper: forwards of B - m and m rows (+ the probe's m), not B + m + m."""
    x, y = _data(batch=8)
    reg = MarginalDensityRegularizer(1.0, fraction=0.25)  # rfd: the clean forward and one probe
    assert rows_of_each_forward(_sample_wise_model(), reg, x, y)[2] == [6, 2, 2]
    assert rows_of_each_forward(_bn_model(), reg, x, y)[2] == [8, 2, 2]
    forced = MarginalDensityRegularizer(1.0, fraction=0.25, batch_coupled=True)
    assert rows_of_each_forward(_sample_wise_model(), forced, x, y)[2] == [8, 2, 2]


def test_train_mode_batchnorm_is_detected_as_coupling():
    from tests.timm_import import import_timm

    evo = import_timm().layers.EvoNorm2dB0(4)
    assert couples_batch(_bn_model()) and couples_batch(evo)
    assert not couples_batch(_sample_wise_model()) and not couples_batch(_bn_model().eval())
    assert not couples_batch(evo.eval()) and not couples_batch(import_timm().layers.EvoNorm2dS0(4))
    assert not couples_batch(lambda x: x)


class _FunctionalBatchNorm(torch.nn.Module):
    """Train-mode F.batch_norm with buffers it passes itself: no module announces the coupling."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.head = torch.nn.Linear(4 * 6 * 6, 10)
        self.register_buffer("mean", torch.zeros(4, dtype=torch.float64))
        self.register_buffer("var", torch.ones(4, dtype=torch.float64))

    def forward(self, x):
        h = F.batch_norm(self.conv(x), self.mean, self.var, training=True)
        return self.head(torch.tanh(h).flatten(1))


@pytest.mark.parametrize("build,coupled,error", [(_FunctionalBatchNorm, None, HeldStatisticsError),
                                                 (_bn_model, False, ValueError)])
def test_batch_coupling_in_a_split_batch_raises_before_changing_state(build, coupled, error):
    """Announced by a module (told False): refused before any pass; a functional call: at the call."""
    torch.manual_seed(0)
    model = build().double()
    before = [b.clone() for b in model.buffers()]
    x, y = _data()
    reg = MarginalDensityRegularizer(1.0, fraction=0.5, batch_coupled=coupled)
    with pytest.raises(error, match="batch_coupled"):
        reg(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    if build is _FunctionalBatchNorm:  # as the error advises
        loss, _ = MarginalDensityRegularizer(1.0, fraction=0.5, batch_coupled=True)(model, x, y)
        assert math.isfinite(loss.item())


@pytest.mark.parametrize("value,error", [(1, TypeError), ("yes", TypeError), (torch.tensor(True), TypeError)])
def test_bad_batch_coupled_raises(value, error):
    with pytest.raises(error, match="batch_coupled"):
        MarginalDensityRegularizer(1.0, fraction=0.5, batch_coupled=value)


def test_complement_is_the_rest_of_the_batch_in_order():
    gen = torch.Generator().manual_seed(5)
    for batch, fraction in ((8, 0.25), (7, 0.5), (5, 1.0), (64, 0.125)):
        idx = draw_subset(batch, fraction, torch.device("cpu"), gen)
        rest = complement(idx, batch)
        assert rest.tolist() == sorted(set(range(batch)) - set(idx.tolist()))


@pytest.mark.parametrize("build", [_sample_wise_model, _bn_model], ids=["split", "one-forward"])
def test_fraction_under_bf16_autocast(build):
    """Under CPU bf16 autocast both schedules give a finite step whose CE is the whole batch's autocast CE;
    the logits are rounded to bf16 (eps 2^-8) in either, and a sample's rounding may differ with the
    batch it is computed in, so they agree to a few bf16 ulps (2e-2 relative), not to float64's 1e-12."""
    model = build().float()
    x, y = _data(batch=8)
    x = x.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = MarginalDensityRegularizer(1.0, fraction=0.25, generator=torch.Generator().manual_seed(0))(
            model, x, y)
        plain = F.cross_entropy(build().float()(x), y).item()
    loss.backward()
    assert math.isfinite(loss.item()) and math.isfinite(stats["penalty"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert stats["ce"] == pytest.approx(plain, rel=2e-2)
