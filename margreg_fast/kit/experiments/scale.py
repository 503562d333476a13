r"""Scale-free rows: each model's scale-dependent metrics after temperature scaling, and the density
shift in the model's own units.

Penalising ||grad_x logsumexp f(x)||^2 is cheapest by shrinking every logit, which keeps the argmax. A
metric in the units of the logits then moves with the logit scale whatever the model's smoothness: the
density shift |E(x + delta) - E(x)|, E = logsumexp f = log p(x) + log Z, shrinks about T-fold when the
logits do, and so does the target logit; the probability variant of the insertion game reads a
flatter softmax. Two corrections, fixed in advance:

- **Temperature scaling** (Guo et al. 2017). One temperature per trained model,

      T* = argmin_{T > 0} mean_i CE(z_i / T, y_i)

  on calibration images (below). With beta = 1 / T the objective L(beta) = mean_i [logsumexp(beta z_i)
  - beta z_{i, y_i}] is convex: L'(beta) = mean_i (E_{p_beta}[z_i] - z_{i, y_i}) and L''(beta) =
  mean_i Var_{p_beta}[z_i] >= 0, p_beta = softmax(beta z_i). So L' is non-decreasing and its root is
  found by bisection on log beta over [1 / T_MAX, 1 / T_MIN] in float64 (``fit_temperature``; a root
  outside that range gives the nearer bound). Every scale-dependent metric is then recomputed on the
  tempered model z / T*: ``density_shift_T``, ``insertion_auc_paper_T``, ``insertion_auc_rom_T``,
  ``insertion_auc_prob_T`` and ``target_logit_mean_T`` (beside the raw ``target_logit_mean``). The two
  ratio insertion variants divide a logit by a logit, so T cancels in them (they equal the raw ones up
  to rounding: recorded to show it); the probability variant and the density shift do change.
- **Own units**: ``density_shift_own_units`` = density_shift / std_i E(x_i), the raw shift divided by
  the standard deviation (n - 1 in the denominator) of log p(x) + log Z over the clean evaluated test
  images: how far the adversarial perturbation moves log p(x) compared with how much it varies across
  the test digits. ``energy_std`` is that spread. This correction is approximate: logsumexp(z / c) =
  logsumexp(z) / c only where one logit dominates, so a logit scale c divides out of it only roughly
  (tests/kit/experiments/test_scale.py measures it); the tempered shift is the exact one.

The calibration images. The claims' models train on every image of the training split (``split="test"``,
datasets.py), so no training image is held out from them, and holding some out would change what every
existing row measures. The images no scale-dependent metric reads are the test images after the first
``eval_samples`` (those feed the attacks, insertion and density; the rest only the accuracies, which a
temperature does not change): T is fitted on them (``calibration_split``), so it is fitted on images
the model never trained on and scored on others. ``calibration_images`` records how many.
"""
from __future__ import annotations

import math

import torch

from .. import metrics
from ..data import ImageDataset
from ..paper_metrics import curve_area_paper, insertion_logits_paper, paper_ratio_curve, ratio_of_means_curve
from .config import ExperimentConfig
from .evaluation import EVAL_BATCH, _attribute

#: The temperature's search range: T in [T_MIN, T_MAX] (a model whose logits a factor 1e4 either way would
#: calibrate is outside anything the kit trains).
T_MIN, T_MAX = 1e-4, 1e4
BISECTIONS = 200
#: Keys of ``scale_free_scores``.
SCALE_KEYS = ("temperature", "calibration_images", "calibration_nll", "calibration_nll_T", "target_logit_mean",
              "target_logit_mean_T", "density_shift_T", "energy_std", "density_shift_own_units",
              "insertion_auc_paper_T", "insertion_auc_rom_T", "insertion_auc_prob_T")
#: Each scale-dependent claim metric and its scale-free twins (the claims table shows both verdicts); every
#: other claim metric is scale-free by construction (accuracies, shares of attribution, rank and cosine
#: similarities of maps, ratios of logits).
SCALE_FREE_TWINS = {"density_shift": ("density_shift_T", "density_shift_own_units"),
                    "insertion_auc_paper": ("insertion_auc_paper_T",),
                    "insertion_auc_rom": ("insertion_auc_rom_T",),
                    "insertion_auc_prob": ("insertion_auc_prob_T",)}


def nll(logits: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> float:
    """mean_i CE(z_i / T, y_i) in float64."""
    return torch.nn.functional.cross_entropy(logits.double() / temperature, y).item()


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """T* = argmin_{T in [T_MIN, T_MAX]} mean_i CE(z_i / T, y_i) (module docstring: bisection on the
    monotone derivative in log beta, beta = 1 / T)."""
    if logits.dim() != 2 or y.shape != logits.shape[:1] or not len(y):
        raise ValueError(f"need logits (N, C) and labels (N,), N >= 1, got {tuple(logits.shape)} and {tuple(y.shape)}")
    z = logits.detach().double()
    zy = z.gather(1, y[:, None].long()).squeeze(1)

    def slope(log_beta: float) -> float:  # L'(beta)
        p = torch.softmax(math.exp(log_beta) * z, dim=1)
        return ((p * z).sum(1) - zy).mean().item()

    lo, hi = -math.log(T_MAX), -math.log(T_MIN)
    if slope(lo) >= 0:
        return T_MAX
    if slope(hi) <= 0:
        return T_MIN
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    return math.exp(-0.5 * (lo + hi))


class Tempered(torch.nn.Module):
    """``model`` with its logits divided by ``temperature``."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def calibration_split(test: ImageDataset, cfg: ExperimentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels): the test images after the first ``eval_samples`` (module docstring)."""
    n = min(cfg.eval_samples, len(test.y))
    if n >= len(test.y):
        raise ValueError(f"no calibration images: all {len(test.y)} test images are evaluated (eval_samples "
                         f"{cfg.eval_samples}); the temperature needs test images beyond the evaluated ones")
    return test.x[n:], test.y[n:]


def energy(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """E(x) = logsumexp_k f(x)_k per image (float64), in batches."""
    return torch.logsumexp(metrics.predict_logits(model, x, EVAL_BATCH).double(), dim=1)


def scale_free_scores(model: torch.nn.Module, test: ImageDataset, cfg: ExperimentConfig, density_shift: float | None) -> dict:
    """SCALE_KEYS for one trained model (module docstring); ``density_shift`` is the model's raw
    density_shift (evaluation.evaluate_model's), which ``density_shift_own_units`` divides."""
    model.eval()
    n = min(cfg.eval_samples, len(test.y))
    x, y = test.x[:n], test.y[:n]
    xc, yc = calibration_split(test, cfg)
    calibration = metrics.predict_logits(model, xc, EVAL_BATCH)
    t = fit_temperature(calibration, yc)
    tempered = Tempered(model, t).eval()
    attr = _attribute(model, test, cfg)  # the rows' maps (a tempered model's are these / T: same insertion order)
    z, full, prob = insertion_logits_paper(tempered, x, attr, y, steps=cfg.insertion_pixels, batch_size=EVAL_BATCH)
    spread = energy(model, x).std().item() if n > 1 else float("nan")
    raw_full = metrics.predict_logits(model, x, EVAL_BATCH).double().gather(1, y[:, None]).squeeze(1)
    return {
        "temperature": t, "calibration_images": len(yc), "calibration_nll": nll(calibration, yc),
        "calibration_nll_T": nll(calibration, yc, t), "target_logit_mean": raw_full.mean().item(),
        "target_logit_mean_T": full.mean().item(),
        "density_shift_T": metrics.density_shift(tempered, x, eps=cfg.density_eps, kind="adversarial", norm="l2",
                                                 steps=cfg.density_steps, batch_size=EVAL_BATCH),
        "energy_std": spread,
        "density_shift_own_units": None if density_shift is None else density_shift / spread,
        "insertion_auc_paper_T": curve_area_paper(paper_ratio_curve(z, full)),
        "insertion_auc_rom_T": curve_area_paper(ratio_of_means_curve(z, full)),
        "insertion_auc_prob_T": curve_area_paper(prob.mean(1)),
    }
