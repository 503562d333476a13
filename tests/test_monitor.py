"""The secant monitor: the ratio it reports, its warm-up, window and band, that it warns once, at once on
non-finite values (0/0 quiet), with advice that fits the cause, at the user's line. The direction
audit (audit_every=): its cosine against an exact reference, its schedule, that it leaves training
as it was, and its warning."""
import math
import sys
import warnings

import pytest
import torch

from margreg_fast._monitor import SecantMonitor, SecantWarning, secant_ratio


def test_ratio_is_rms_slope_over_rms_grad_norm():
    slope, norm = torch.tensor([1.0, -2.0, 2.0]), torch.tensor([2.0, 2.0, 2.0])
    assert secant_ratio(slope, norm) == pytest.approx(math.sqrt(9 / 12))
    assert math.isnan(secant_ratio(slope, torch.zeros(3)))


def feed(monitor, ratios):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        medians = [monitor.update(r) for r in ratios]
    return medians, [w for w in caught if issubclass(w.category, SecantWarning)]


def test_warns_once_when_the_window_median_leaves_the_band_after_warmup():
    monitor = SecantMonitor("fd", window=4, band=(0.5, 2.0), warmup=3)
    medians, warned = feed(monitor, [0.1] * 3 + [1.0] * 4 + [0.2] * 10)
    assert medians[:6] == [None] * 6 and medians[6] == 1.0  # warm-up ignored, then a full window
    assert len(warned) == 1 and "'fd'" in str(warned[0].message) and "0.2x" in str(warned[0].message)


@pytest.mark.parametrize("ratios", [[1.0] * 20, [0.6, 1.7] * 10, [float("nan")] * 20])
def test_quiet_inside_the_band(ratios):
    _, warned = feed(SecantMonitor("rfd", window=4, warmup=0), ratios)
    assert not warned


def test_too_large_a_slope_warns_too():
    _, warned = feed(SecantMonitor("central", window=2, warmup=0), [3.0, 3.0])
    assert len(warned) == 1


@pytest.mark.parametrize("kwargs", [dict(window=0), dict(window=True), dict(band=(1.2, 2.0)), dict(band=(0.5, 0.9)),
                                    dict(warmup=-1)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        SecantMonitor("rfd", **kwargs)


def test_non_finite_penalty_warns_at_once_and_once():
    _, warned = feed_steps(SecantMonitor("rfd", window=4, warmup=100), [(1.0, float("nan"), 3.0),
                                                                         (1.0, float("inf"), 3.0)])
    assert len(warned) == 1 and "penalty is nan" in str(warned[0].message)
    assert "estimator='rfd'" not in str(warned[0].message)


def test_non_finite_ratio_with_a_gradient_warns_at_once():
    _, warned = feed_steps(SecantMonitor("central", window=4, warmup=100), [(float("nan"), 2.0, 1.0)])
    assert len(warned) == 1 and "non-zero input gradient" in str(warned[0].message)


def test_zero_gradient_is_quiet():
    """0/0: a zero-initialised head gives R = 0 and no input gradient, which is no failure."""
    _, warned = feed_steps(SecantMonitor("rfd", window=1, warmup=0), [(float("nan"), 0.0, 0.0)] * 5)
    assert not warned


def feed_steps(monitor, steps):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        medians = [monitor.update(*step) for step in steps]
    return medians, [w for w in caught if issubclass(w.category, SecantWarning)]


@pytest.mark.parametrize("method", ["rfd", "central", "fd", "exact", "jvp"])
@pytest.mark.parametrize("ratio", [0.2, 3.0, 100.0])
def test_advice_fits_the_method_and_never_tells_an_rfd_user_to_use_rfd(method, ratio):
    _, warned = feed(SecantMonitor(method, window=2, warmup=0), [ratio] * 2)
    message = str(warned[0].message)
    assert method == "fd" or "estimator='rfd'" not in message
    if ratio == 100.0:
        assert "random draws" in message
    elif method == "fd" and ratio < 1:
        assert "games the one-sided secant" in message and "estimator='rfd'" in message
    else:
        assert "step h" in message


def test_regulariser_warning_points_at_the_users_line():
    from margreg_fast import MarginalDensityRegularizer
    model = torch.nn.Linear(4, 3)
    reg = MarginalDensityRegularizer(1.0, monitor_warmup=0)
    x = torch.full((2, 4), float("nan"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        reg(model, x, torch.tensor([0, 1]))
    (w,) = [w for w in caught if issubclass(w.category, SecantWarning)]
    assert w.filename == __file__ and w.lineno == line


def test_zero_initialised_head_stays_quiet_in_the_regulariser():
    from margreg_fast import MarginalDensityRegularizer
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    torch.nn.init.zeros_(model[2].weight)
    reg = MarginalDensityRegularizer(1.0, monitor_warmup=0, monitor_window=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecantWarning)
        _, stats = reg(model, torch.rand(4, 4), torch.tensor([0, 1, 2, 0]))
    assert stats["penalty"] == 0 and math.isnan(stats["secant_ratio"])


# The direction audit (margreg_fast/_audit.py): opt-in, every N steps, the estimator's parameter gradient
# against fp32 exact's on a few samples.

def _digits(n=16):
    from margreg_fast.kit.data import load_digits_images, place_on_canvas
    images, labels = load_digits_images()
    return place_on_canvas(images[:n], 20, seed=0), labels[:n]


def _bn_dropout_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.SiLU(),
                               torch.nn.Dropout(0.3), torch.nn.Flatten(), torch.nn.Linear(8 * 18 * 18, 10))


def test_audit_of_exact_against_exact_is_one():
    from margreg_fast._audit import audit_cosine
    x, y = _digits()
    cosine, reference = audit_cosine(_bn_dropout_net(), x, y, penalty_kind="marginal", estimator="exact", step="auto")
    assert reference == "exact" and cosine >= 1 - 1e-9, cosine


def test_audit_leaves_training_as_it_was():
    """Same losses and parameters after 3 SGD steps with and without the audit: it moves no running
    statistic, draws nothing from torch's generator that training sees, and leaves .grad alone."""
    from margreg_fast import MarginalDensityRegularizer
    x, y = _digits()
    runs = []
    for audit_every in (None, 1):
        model = _bn_dropout_net()
        opt = torch.optim.SGD(model.parameters(), 0.1)
        reg = MarginalDensityRegularizer(1.0, audit_every=audit_every)
        torch.manual_seed(5)
        losses = []
        for _ in range(3):
            loss, stats = reg(model, x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert ("audit_cosine" in stats) == (audit_every is not None)
        runs.append((losses, [p.detach().clone() for p in model.parameters()], model[1].running_mean.clone()))
    (l0, p0, r0), (l1, p1, r1) = runs
    assert l0 == l1 and all(torch.equal(a, b) for a, b in zip(p0, p1)) and torch.equal(r0, r1)


def test_audit_runs_every_n_steps_and_reports_nan_between():
    from margreg_fast import MarginalDensityRegularizer
    x, y = _digits()
    reg = MarginalDensityRegularizer(1.0, audit_every=3)
    model = _bn_dropout_net()
    cosines = [reg(model, x, y)[1]["audit_cosine"] for _ in range(4)]
    assert [math.isnan(c) for c in cosines] == [False, True, True, False], cosines
    assert all(0.9 <= c <= 1 + 1e-9 for c in cosines if not math.isnan(c)), cosines


def test_audit_warns_once_naming_the_cause_when_the_direction_is_lost():
    """On a compiled ReLU max-pool net without BatchNorm, whose passes stay compiled and so do not
    replay the clean pass's activation patterns (margreg_fast/_estimators/patterns.py), at init with
    step=0.02 the secant crosses kinks and ties: the audit's cosine is far below 0.5; the warning
    says why and points at the user's line."""
    from margreg_fast import GradientDirectionWarning, MarginalDensityRegularizer
    from margreg_fast.kit import models
    x, y = _digits()
    torch.manual_seed(0)
    model = torch.compile(models.MaxPoolCNN(width=8, image_size=20, hidden=64, activation="relu"), backend="eager")
    reg = MarginalDensityRegularizer(1.0, step=0.02, audit_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        stats = [reg(model, x, y)[1] for _ in range(2)]
    warned = [w for w in caught if issubclass(w.category, GradientDirectionWarning)]
    assert stats[0]["audit_cosine"] < 0.5 and len(warned) == 1, (stats, warned)
    message = str(warned[0].message)
    assert "cosine" in message and "exact" in message and ("kinks" in message or "step=" in message), message
    assert warned[0].filename == __file__ and warned[0].lineno == line


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_audit_every_must_be_a_positive_int(every):
    from margreg_fast import MarginalDensityRegularizer
    with pytest.raises(ValueError, match="audit_every"):
        MarginalDensityRegularizer(1.0, audit_every=every)
