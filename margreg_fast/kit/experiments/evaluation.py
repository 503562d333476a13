"""Evaluate one trained model: the thirteen numbers of results.json plus what the figures need.

Metric choices (all fixed in advance, never tuned per method):

- ``clean_acc``: accuracy on the whole test set.
- ``leakage``: share of |attribution| on ``null_mask`` (the null block for BlockMNIST, the shortcut
  patch for the spurious variant), attribution ``cfg.attribution`` w.r.t. the true label.
- ``leakage_paper`` / ``leakage_topk``: the same attributions in the paper's units: the null block's
  sum of each image's min-max-normalised |attribution|, and the share of the top
  ``leakage_top_fraction`` of pixels on it (paper_metrics).
- ``insertion_auc``: insertion game with the same attributions (metrics.insertion_auc), normalised
  to [0, 1] fractions; ``insertion_auc_paper``: the paper's units, ``insertion_pixels`` one-pixel
  steps from a black image, y = max(0, z_t / z_t(x)), trapezoid with dx = 1 (paper_metrics).
- ``pgd_linf_acc`` / ``pgd_l2_acc``: accuracy under PGD with eps ``pgd_linf_eps`` / ``pgd_l2_eps``.
- ``topk_intersection`` / ``kendall_tau``: attribution robustness under the top-k attribution attack.
- ``density_shift``: mean |E(x+delta) - E(x)|, E = logsumexp f = log p(x) + log Z, for an
  *adversarial* L2 perturbation of norm ``density_eps`` (the random-direction figure is kept in the
  per-seed file as ``density_shift_random``). Lower is better.
- The per-seed file also records the leakage (share and paper units) under both gradient attributions
  (saliency, Integrated Gradients; zero-ablation costs one forward per pixel, so it is only computed
  when it is ``cfg.attribution``) and, for
  the spurious variant, ``acc_patch_disagrees``: accuracy on the test images whose patch names
  another class than the label (a steadier shortcut measure than the worst of 100 small groups).
- ``worst_group_acc``: the lowest accuracy over the dataset's groups: (label, patch class) for the
  spurious variant, digit-on-top vs digit-at-bottom for BlockMNIST.
A metric whose ingredient the dataset lacks (no null mask, no groups) is ``None``, and so is one that
is undefined for the run (``insertion_auc_paper`` when no evaluated image has a positive target logit).

Attribution, attack and density metrics use the first ``eval_samples`` test images. All randomness
(PGD random starts, random density directions) runs under ``torch.random.fork_rng`` seeded from the
run seed, so evaluation is reproducible and does not disturb the caller's RNG.
"""
from __future__ import annotations

import torch

from .. import metrics
from ..attacks import PGD, attribution_robustness
from ..attribution import attribute
from ..paper_metrics import curve_area_paper, insertion_curve_paper, leakage_paper, leakage_topk
from ..data import ImageDataset
from .checkpoint import finite_or_none
from .config import ExperimentConfig

#: Keys of one method's entry in results.json, in order.
RESULT_KEYS = ("clean_acc", "leakage", "leakage_paper", "leakage_topk", "insertion_auc", "insertion_auc_paper",
               "pgd_linf_acc", "pgd_l2_acc", "topk_intersection",
               "kendall_tau", "density_shift", "worst_group_acc", "step_time_s")
FIGURE_SAMPLES = 6
#: Attributions whose leakage is recorded in the per-seed file besides ``cfg.attribution``.
GRADIENT_ATTRIBUTIONS = ("saliency", "integrated_gradients")


def _pgd_accuracy(model, x, y, *, eps, norm, steps, seed) -> float:
    if eps == 0:
        return metrics.accuracy(model, x, y)
    # Step size 2.5 * eps / steps, the usual Madry et al. choice.
    attack = PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, norm=norm, random_start=True, seed=seed)
    return metrics.accuracy(model, attack(x, y), y)


def evaluate_model(model: torch.nn.Module, test: ImageDataset, cfg: ExperimentConfig, seed: int) -> dict:
    """Return ``{"image_shape": [C, H, W], "metrics": {...}, "extra": {...}, "figure": {...}}`` for one
    trained model (undefined numbers as None)."""
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_007 * (seed + 1))
        n = min(cfg.eval_samples, len(test.y))
        x, y = test.x[:n], test.y[:n]
        out = {k: None for k in RESULT_KEYS}
        out["clean_acc"] = metrics.accuracy(model, test.x, test.y)
        if test.group is not None:
            out["worst_group_acc"] = metrics.worst_group_accuracy(model, test.x, test.y, test.group)
        attr = attribute(model, x, y, method=cfg.attribution, n_steps=cfg.ig_steps).detach()
        if test.null_mask is not None:
            out["leakage"] = metrics.feature_leakage(attr, test.null_mask[:n])
            out["leakage_paper"] = leakage_paper(attr, test.null_mask[:n])
            out["leakage_topk"] = leakage_topk(attr, test.null_mask[:n], cfg.leakage_top_fraction)
        fractions, curve = metrics.insertion_curve(model, x, attr, y, steps=cfg.insertion_steps)
        out["insertion_auc"] = metrics.curve_area(fractions, curve)
        paper_curve = insertion_curve_paper(model, x, attr, y, steps=cfg.insertion_pixels)
        out["insertion_auc_paper"] = curve_area_paper(paper_curve)
        out["pgd_linf_acc"] = _pgd_accuracy(model, x, y, eps=cfg.pgd_linf_eps, norm="linf",
                                            steps=cfg.pgd_steps, seed=seed)
        out["pgd_l2_acc"] = _pgd_accuracy(model, x, y, eps=cfg.pgd_l2_eps, norm="l2", steps=cfg.pgd_steps, seed=seed)
        rob = attribution_robustness(model, x, y, eps=cfg.attack_eps, k=cfg.topk, steps=cfg.attack_steps)
        out["topk_intersection"], out["kendall_tau"] = rob["topk_intersection"], rob["kendall_tau"]
        out["density_shift"] = metrics.density_shift(model, x, eps=cfg.density_eps, kind="adversarial",
                                                     norm="l2", steps=cfg.density_steps)
        extra = {}
        if test.null_mask is not None:  # leakage under the other attributions, for the record
            for method in dict.fromkeys((cfg.attribution, *GRADIENT_ATTRIBUTIONS)):
                a = attr if method == cfg.attribution else attribute(model, x, y, method=method,
                                                                      n_steps=cfg.ig_steps).detach()
                extra[f"leakage_{method}"] = metrics.feature_leakage(a, test.null_mask[:n])
                extra[f"leakage_paper_{method}"] = leakage_paper(a, test.null_mask[:n])
        if cfg.experiment == "spurious":  # group = label * 10 + patch class (data.make_spurious)
            conflict = test.group % 10 != test.y
            extra["acc_patch_disagrees"] = metrics.accuracy(model, test.x[conflict], test.y[conflict])
        extra["density_shift_random"] = metrics.density_shift(model, x, eps=cfg.density_eps, kind="random",
                                                               norm="l2", seed=seed)
    figure = {
        "inputs": x[:FIGURE_SAMPLES].squeeze(1).tolist(),
        "attributions": attr[:FIGURE_SAMPLES].squeeze(1).tolist(),
        "insertion_fractions": [float(f) for f in torch.as_tensor(fractions)],
        "insertion_curve": [finite_or_none(c) for c in torch.as_tensor(curve).tolist()],
        "insertion_curve_paper": [finite_or_none(c) for c in paper_curve.tolist()],
    }
    return {"image_shape": list(test.x.shape[1:]), "metrics": {k: finite_or_none(v) for k, v in out.items()},
            "extra": {k: finite_or_none(v) for k, v in extra.items()}, "figure": figure}
