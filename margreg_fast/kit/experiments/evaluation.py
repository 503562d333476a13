"""Evaluate one trained model: the numbers of results.json plus what the figures need.

Metric choices (all fixed in advance, never tuned per scheme):

- ``clean_acc``: accuracy on the whole test set.
- ``leakage``: share of |attribution| on ``null_mask`` (the null block for BlockMNIST, the shortcut
  patch for the spurious variant), attribution ``cfg.attribution`` w.r.t. the true label.
- ``leakage_paper`` / ``leakage_topk``: the same attributions in the paper's units: the null block's
  sum of each image's min-max-normalised |attribution|, and the share of the top
  ``leakage_top_fraction`` of pixels on it (paper_metrics).
- ``insertion_auc``: insertion game with the same attributions (metrics.insertion_auc), normalised
  to [0, 1] fractions; ``insertion_auc_paper``: the paper's units, ``insertion_pixels`` one-pixel
  steps from a black image, y = max(0, z_t / z_t(x)) per image, trapezoid with dx = 1 (paper_metrics);
  ``insertion_auc_rom`` (the ratio of means, max(0, mean z_t / mean z_t(x)) over the same images) and
  ``insertion_auc_prob`` (the target's softmax probability, mean over all evaluated images) from the
  same game and units.
- ``pgd_linf_acc`` / ``pgd_l2_acc``: accuracy under PGD with eps ``pgd_linf_eps`` / ``pgd_l2_eps``.
- ``topk_intersection`` / ``kendall_tau`` / ``spearman`` / ``cosine``: similarity of the saliency
  maps before and after the top-k attribution attack (attacks.SIMILARITIES); the per-seed file adds
  the same under random noise of the attack's size (``*_random``), the top-k intersection at the top
  ``leakage_top_fraction`` of pixels (``topk_intersection_wide``), the clean maps' ``topk_mass`` and
  ``saliency_l2``, and the mean target logit ``target_logit_mean`` (the model's logit scale).
- ``density_shift``: mean |E(x+delta) - E(x)|, E = logsumexp f = log p(x) + log Z, for an
  *adversarial* L2 perturbation of norm ``density_eps`` (the random-direction figure is kept in the
  per-seed file as ``density_shift_random``). Lower is better.
- ``worst_group_acc``: the lowest accuracy over the dataset's groups: (label, patch class) for the
  spurious variant, digit-on-top vs digit-at-bottom for BlockMNIST; ``acc_patch_disagrees`` (spurious
  only): accuracy on the test images whose patch names another class than the label (a steadier
  shortcut measure than the worst of 100 small groups).
- The per-seed file also records the leakage (share and paper units) under both gradient attributions
  (saliency, Integrated Gradients; zero-ablation costs one forward per pixel, so it is only computed
  when it is ``cfg.attribution``).
A metric whose ingredient the dataset lacks (no null mask, no groups) is ``None``, and so is one that
is undefined for the run (``insertion_auc_paper`` when no evaluated image has a positive target logit).

Attribution, attack and density metrics use the first ``eval_samples`` test images. All randomness
(PGD random starts, random density directions) runs under ``torch.random.fork_rng`` seeded from the
run seed, so evaluation is reproducible and does not disturb the caller's RNG.

``marginal_penalty`` is the trained model's exact R on the evaluated images (the claims compare the
default estimator's model with the exact-penalty twin's by it).

``light_scores`` computes only the cheap part (accuracies and, where there is a null mask, the
leakage), with the same code and images, so its numbers equal the full evaluation's: the weight
frontier and the spurious rows of the claims need no more.

The single-image panel (``panel``): the first test image whose label is ``PANEL_LABEL`` (a "7", as
in the paper's Figure 1), with its attribution, leakage_paper and paper-units insertion curve.
"""
from __future__ import annotations

import math

import torch

from ... import marginal_density_penalty
from .. import metrics
from ..attacks import PGD, SIMILARITIES, attribution_robustness
from ..attribution import attribute
from ..paper_metrics import (curve_area_paper, insertion_logits_paper, leakage_paper, leakage_topk, paper_ratio_curve,
                             ratio_of_means_curve)
from ..data import ImageDataset
from .checkpoint import finite_or_none
from .config import ExperimentConfig

#: Keys of one scheme's entry in results.json, in order.
RESULT_KEYS = ("clean_acc", "leakage", "leakage_paper", "leakage_topk", "insertion_auc", "insertion_auc_paper",
               "insertion_auc_rom", "insertion_auc_prob", "pgd_linf_acc", "pgd_l2_acc", *SIMILARITIES,
               "density_shift", "worst_group_acc", "acc_patch_disagrees", "step_time_s")
FIGURE_SAMPLES = 6
#: Attributions whose leakage is recorded in the per-seed file besides ``cfg.attribution``.
GRADIENT_ATTRIBUTIONS = ("saliency", "integrated_gradients")
#: The class of the single-image panel's input (the paper's Figure 1 shows a "7").
PANEL_LABEL = 7
#: Images per forward / backward in the evaluation's attacks and games (smaller batches ran faster than
#: 512 on a CPU; only float rounding depends on it).
EVAL_BATCH = 128


def _pgd_accuracy(model, x, y, *, eps, norm, steps, seed) -> float:
    if eps == 0:
        return metrics.accuracy(model, x, y)
    # Step size 2.5 * eps / steps, the usual Madry et al. choice.
    attack = PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, norm=norm, random_start=True, seed=seed,
                 batch_size=EVAL_BATCH)
    return metrics.accuracy(model, attack(x, y), y)


def _accuracy_scores(model, test: ImageDataset, cfg: ExperimentConfig) -> dict:
    out = {"clean_acc": metrics.accuracy(model, test.x, test.y)}
    if test.group is not None:
        out["worst_group_acc"] = metrics.worst_group_accuracy(model, test.x, test.y, test.group)
    if cfg.experiment == "spurious":  # group = label * 10 + patch class (data.make_spurious)
        conflict = test.group % 10 != test.y
        out["acc_patch_disagrees"] = metrics.accuracy(model, test.x[conflict], test.y[conflict])
    return out


def _leakage_scores(attr: torch.Tensor, null_mask: torch.Tensor, cfg: ExperimentConfig) -> dict:
    return {"leakage": metrics.feature_leakage(attr, null_mask), "leakage_paper": leakage_paper(attr, null_mask),
            "leakage_topk": leakage_topk(attr, null_mask, cfg.leakage_top_fraction)}


def _attribute(model, test: ImageDataset, cfg: ExperimentConfig, method: str | None = None) -> torch.Tensor:
    n = min(cfg.eval_samples, len(test.y))
    return attribute(model, test.x[:n], test.y[:n], method=method or cfg.attribution, n_steps=cfg.ig_steps).detach()


def marginal_penalty(model: torch.nn.Module, test: ImageDataset, cfg: ExperimentConfig) -> float:
    """The trained model's true marginal penalty: the mean over the first ``eval_samples`` test images of
    R(x) = ||grad_x logsumexp f(x)||^2, computed exactly (by autograd, whatever estimator trained it)."""
    n = min(cfg.eval_samples, len(test.y))
    with torch.no_grad():
        total = math.fsum(marginal_density_penalty(model, xb, estimator="exact", reduction="sum").item()
                          for xb in test.x[:n].split(EVAL_BATCH))
    return total / n


#: Keys of ``light_scores``.
LIGHT_KEYS = ("clean_acc", "leakage", "leakage_paper", "leakage_topk", "worst_group_acc", "acc_patch_disagrees")


def light_scores(model: torch.nn.Module, test: ImageDataset, cfg: ExperimentConfig) -> dict:
    """LIGHT_KEYS only (None where not measured): accuracies, and the leakage for BlockMNIST."""
    model.eval()
    out = {k: None for k in LIGHT_KEYS}
    out.update(_accuracy_scores(model, test, cfg))
    if cfg.experiment == "blockmnist" and test.null_mask is not None:
        n = min(cfg.eval_samples, len(test.y))
        out.update(_leakage_scores(_attribute(model, test, cfg), test.null_mask[:n], cfg))
    return {k: finite_or_none(v) for k, v in out.items()}


def single_image_panel(model: torch.nn.Module, test: ImageDataset, cfg: ExperimentConfig) -> dict | None:
    """The panel of the module docstring for this model; None if no test image has label PANEL_LABEL."""
    hits = (test.y == PANEL_LABEL).nonzero()
    if not len(hits):
        return None
    i = int(hits[0])
    x, y = test.x[i:i + 1], test.y[i:i + 1]
    attr = attribute(model, x, y, method=cfg.attribution, n_steps=cfg.ig_steps).detach()
    z, full, _ = insertion_logits_paper(model, x, attr, y, steps=cfg.insertion_pixels)
    curve = paper_ratio_curve(z, full)
    panel = {"index": i, "label": PANEL_LABEL, "input": x[0, 0].tolist(), "attribution": attr[0, 0].tolist(),
             "insertion_curve_paper": [finite_or_none(c) for c in curve.tolist()],
             "insertion_auc_paper": finite_or_none(curve_area_paper(curve))}
    if test.null_mask is not None:
        panel["leakage_paper"] = finite_or_none(leakage_paper(attr, test.null_mask[i:i + 1]))
    return panel


def evaluate_model(model: torch.nn.Module, test: ImageDataset, cfg: ExperimentConfig, seed: int) -> dict:
    """Return ``{"image_shape": [C, H, W], "metrics": {...}, "extra": {...}, "figure": {...}, "panel": ...}``
    for one trained model (undefined numbers as None)."""
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_007 * (seed + 1))
        n = min(cfg.eval_samples, len(test.y))
        x, y = test.x[:n], test.y[:n]
        out = {k: None for k in RESULT_KEYS}
        out.update(_accuracy_scores(model, test, cfg))
        attr = _attribute(model, test, cfg)
        if test.null_mask is not None:
            out.update(_leakage_scores(attr, test.null_mask[:n], cfg))
        fractions, curve = metrics.insertion_curve(model, x, attr, y, steps=cfg.insertion_steps, batch_size=EVAL_BATCH)
        out["insertion_auc"] = metrics.curve_area(fractions, curve)
        z, full, prob = insertion_logits_paper(model, x, attr, y, steps=cfg.insertion_pixels, batch_size=EVAL_BATCH)
        paper_curve = paper_ratio_curve(z, full)
        out["insertion_auc_paper"] = curve_area_paper(paper_curve)
        out["insertion_auc_rom"] = curve_area_paper(ratio_of_means_curve(z, full))
        out["insertion_auc_prob"] = curve_area_paper(prob.mean(1))
        out["pgd_linf_acc"] = _pgd_accuracy(model, x, y, eps=cfg.pgd_linf_eps, norm="linf",
                                            steps=cfg.pgd_steps, seed=seed)
        out["pgd_l2_acc"] = _pgd_accuracy(model, x, y, eps=cfg.pgd_l2_eps, norm="l2", steps=cfg.pgd_steps, seed=seed)
        rob = attribution_robustness(model, x, y, eps=cfg.attack_eps, k=cfg.topk, steps=cfg.attack_steps,
                                     noise_seed=seed, wide_k=math.ceil(cfg.leakage_top_fraction * x[0].numel()),
                                     batch_size=EVAL_BATCH)
        out.update({k: rob.pop(k) for k in SIMILARITIES})
        out["density_shift"] = metrics.density_shift(model, x, eps=cfg.density_eps, kind="adversarial",
                                                     norm="l2", steps=cfg.density_steps, batch_size=EVAL_BATCH)
        extra = dict(rob)  # the wide top-k, the clean maps' properties and the similarities under random noise
        extra["target_logit_mean"] = full.mean().item()
        if test.null_mask is not None:  # leakage under the other attributions, for the record
            for method in dict.fromkeys((cfg.attribution, *GRADIENT_ATTRIBUTIONS)):
                a = attr if method == cfg.attribution else _attribute(model, test, cfg, method)
                extra[f"leakage_{method}"] = metrics.feature_leakage(a, test.null_mask[:n])
                extra[f"leakage_paper_{method}"] = leakage_paper(a, test.null_mask[:n])
        extra["density_shift_random"] = metrics.density_shift(model, x, eps=cfg.density_eps, kind="random",
                                                               norm="l2", seed=seed)
        panel = single_image_panel(model, test, cfg)
    figure = {
        "inputs": x[:FIGURE_SAMPLES].squeeze(1).tolist(),
        "attributions": attr[:FIGURE_SAMPLES].squeeze(1).tolist(),
        "insertion_fractions": [float(f) for f in torch.as_tensor(fractions)],
        "insertion_curve": [finite_or_none(c) for c in torch.as_tensor(curve).tolist()],
        "insertion_curve_paper": [finite_or_none(c) for c in paper_curve.tolist()],
    }
    return {"image_shape": list(test.x.shape[1:]), "metrics": {k: finite_or_none(v) for k, v in out.items()},
            "extra": {k: finite_or_none(v) for k, v in extra.items()}, "figure": figure, "panel": panel}
