"""Scale-free rows: the temperature fit against scipy.optimize, and every tempered metric against an
independent computation on a real trained model whose last layer is divided by the temperature."""
import copy
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch

from margreg_fast.kit import metrics
from margreg_fast.kit.experiments.datasets import build_datasets
from margreg_fast.kit.experiments.evaluation import evaluate_model
from margreg_fast.kit.experiments.runner import deterministic
from margreg_fast.kit.experiments.scale import (SCALE_KEYS, T_MAX, T_MIN, calibration_split, fit_temperature,
                                                scale_free_scores)
from margreg_fast.kit.experiments.training import train_run


def _scipy_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """argmin over log T of the mean cross-entropy of z / T, by scipy's bounded Brent method (float64)."""
    def loss(log_t):
        s = z / math.exp(log_t)
        return float(np.mean(scipy.special.logsumexp(s, axis=1) - s[np.arange(len(y)), y]))
    return math.exp(scipy.optimize.minimize_scalar(loss, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                                                   options={"xatol": 1e-12}).x)


@pytest.mark.parametrize("scale, noise", [(1.0, 1.0), (20.0, 3.0), (0.05, 0.5)])
def test_temperature_matches_scipy_and_follows_the_logit_scale(scale, noise):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (300,), generator=gen)
    z = torch.randn(300, 10, generator=gen, dtype=torch.float64) * noise
    z[torch.arange(300), y] += 2.0  # an informative but imperfect classifier: an interior optimum
    z = z * scale
    t = fit_temperature(z, y)
    # Brent's xatol 1e-12 on log T; both minimise the same smooth convex function of 1 / T, whose optimum
    # is resolved to ~1e-8 relative by either method in float64
    assert t == pytest.approx(_scipy_temperature(z.numpy(), y.numpy()), rel=1e-6)
    # the point of the fit: a logit scale c gives temperature c T (same tempered logits)
    assert fit_temperature(z * 7.0, y) == pytest.approx(7.0 * t, rel=1e-9)


def test_temperature_at_the_bounds_when_the_optimum_is_outside():
    y = torch.arange(10).repeat(5)
    perfect = 5.0 * torch.nn.functional.one_hot(y, 10).double()  # all right: the loss falls as T -> 0
    assert fit_temperature(perfect, y) == T_MIN
    assert fit_temperature(-perfect, y) == T_MAX  # all wrong: the loss falls as T -> infinity
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(perfect[:, :, None], y)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from .conftest import TINY_FLAGS  # noqa: F401  (the tiny fixture's settings, a few more epochs)
    from margreg_fast.kit.experiments.config import ExperimentConfig

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = ExperimentConfig(experiment="blockmnist", seeds=(0,), dataset="digits", patch_size=None, model="cnn",
                           ig_steps=4, insertion_pixels=12, epochs=6, max_train=400, max_test=96, eval_samples=16,
                           width=8, batch_size=32, pgd_steps=2, attack_steps=2, density_steps=3, insertion_steps=4)
    with deterministic():
        train, test = build_datasets(cfg, 0)
        model = train_run(cfg, "none", 0, train, tmp_path_factory.mktemp("run"), quiet=True).model.eval()
        result = evaluate_model(model, test, cfg, 0)
    yield cfg, model, test, result
    torch.set_num_threads(before)


def _divided(model: torch.nn.Module, t: float) -> torch.nn.Module:
    """A copy of ``model`` whose last Linear layer's weight and bias are divided by t: logits / t."""
    other = copy.deepcopy(model)
    last = [m for m in other.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight /= t
        last.bias /= t
    return other.eval()


def test_scale_free_scores_against_independent_computations(trained):
    cfg, model, test, result = trained
    got = scale_free_scores(model, test, cfg, result["metrics"]["density_shift"])
    assert tuple(got) == SCALE_KEYS
    t = got["temperature"]
    assert T_MIN < t < T_MAX and got["calibration_images"] == len(test.y) - cfg.eval_samples
    xc, yc = calibration_split(test, cfg)
    assert torch.equal(xc, test.x[cfg.eval_samples:])
    # the fitted temperature minimises the calibration NLL (scipy on the same logits)
    logits = metrics.predict_logits(model, xc).double()
    assert t == pytest.approx(_scipy_temperature(logits.numpy(), yc.numpy()), rel=1e-6)
    assert got["calibration_nll_T"] <= got["calibration_nll"]
    # the tempered metrics equal the raw metrics of a model whose last layer is divided by T (float32
    # forward passes through differently rounded weights: 1e-4 relative)
    other = _divided(model, t)
    n = cfg.eval_samples
    x = test.x[:n]
    shift = metrics.density_shift(other, x, eps=cfg.density_eps, kind="adversarial", norm="l2", steps=cfg.density_steps)
    assert got["density_shift_T"] == pytest.approx(shift, rel=1e-4)
    other_result = evaluate_model(other, test, cfg, 0)
    for k in ("insertion_auc_prob", "insertion_auc_rom", "insertion_auc_paper"):
        assert got[f"{k}_T"] == pytest.approx(other_result["metrics"][k], rel=1e-4), k
    assert got["target_logit_mean_T"] == pytest.approx(other_result["extra"]["target_logit_mean"], rel=1e-4)
    assert got["target_logit_mean"] == pytest.approx(result["extra"]["target_logit_mean"], rel=1e-6)
    assert got["target_logit_mean_T"] == pytest.approx(got["target_logit_mean"] / t, rel=1e-6)
    # ratios of logits do not see T; the probability variant does
    assert got["insertion_auc_rom_T"] == pytest.approx(result["metrics"]["insertion_auc_rom"], rel=1e-6)
    assert got["insertion_auc_prob_T"] != pytest.approx(result["metrics"]["insertion_auc_prob"], rel=1e-3)
    # own units: the raw shift over the spread (n - 1) of logsumexp f over the evaluated clean images
    with torch.no_grad():
        e = torch.logsumexp(model(x).double(), dim=1).numpy()
    assert got["energy_std"] == pytest.approx(float(np.std(e, ddof=1)), rel=1e-6)
    assert got["density_shift_own_units"] == pytest.approx(result["metrics"]["density_shift"] / np.std(e, ddof=1),
                                                           rel=1e-6)


def test_scale_free_rows_do_not_see_a_rescaled_model(trained):
    """The confound, removed: logits 20 times smaller shift the raw density 20 times less (about), but the
    fitted temperature absorbs the factor, so the tempered shift and the own-units shift stay."""
    cfg, model, test, result = trained
    small = _divided(model, 20.0)
    small_result = evaluate_model(small, test, cfg, 0)
    a = scale_free_scores(model, test, cfg, result["metrics"]["density_shift"])
    b = scale_free_scores(small, test, cfg, small_result["metrics"]["density_shift"])
    assert small_result["metrics"]["density_shift"] < 0.2 * result["metrics"]["density_shift"]
    assert b["temperature"] == pytest.approx(a["temperature"] / 20.0, rel=1e-4)
    for k in ("density_shift_T", "insertion_auc_prob_T", "target_logit_mean_T"):
        assert b[k] == pytest.approx(a[k], rel=1e-3), k
    # own units divide out the scale only where one logit dominates (logsumexp(z / c) = logsumexp(z) / c only
    # then): far closer than the raw shift's factor of 20, not exact
    raw_ratio = result["metrics"]["density_shift"] / small_result["metrics"]["density_shift"]
    own_ratio = a["density_shift_own_units"] / b["density_shift_own_units"]
    assert raw_ratio > 5 and 1 / 1.5 < own_ratio < 1.5


def test_no_calibration_images_is_an_error(trained):
    cfg, model, test, result = trained
    with pytest.raises(ValueError, match="calibration"):
        scale_free_scores(model, test, cfg.replace(eval_samples=len(test.y)), result["metrics"]["density_shift"])
