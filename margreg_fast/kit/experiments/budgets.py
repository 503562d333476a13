r"""Attack budgets: the attribution attack and PGD at several budgets, as curves rather than one point.

Per trained model, on the first ``eval_samples`` test images (the images of every attack row):

- the top-k attribution attack (attacks.AttributionAttack, the claims' k and steps, step 2.5 eps / steps)
  at each L-inf budget of ATTACK_BUDGETS, and beside it random **uniform sign noise** of the same size
  (each pixel +-eps with probability 1/2: a uniformly random vertex of the L-inf ball, clipped to [0, 1],
  seeded by the run seed), the similarities of attacks.SIMILARITIES between the clean and perturbed
  saliency maps under both (keys ``<measure>@<eps>`` and ``<measure>_random@<eps>``);
- the same similarities on the maps normalised to unit L2 norm (``<measure>_unit@<eps>``): top-k
  intersection, Kendall tau, Spearman and the cosine of |maps| are invariant to a positive factor per
  map, so these equal the raw ones up to rounding (and the flatter logits of a penalised model cannot
  be what moves them); what does read the size of the change is ``unit_l2@<eps>`` =
  mean_i || g'_i / ||g'_i|| - g_i / ||g_i|| ||_2 on the signed maps (0: the same direction, 2: opposite;
  lower is more robust), with its noise twin ``unit_l2_random@<eps>``;
- PGD accuracy (evaluation's PGD: random start, cfg.pgd_steps steps of 2.5 eps / steps, seeded by the
  run seed) at each L-inf budget of PGD_LINF_BUDGETS and each L2 budget of PGD_L2_BUDGETS
  (``pgd_linf_acc@<eps>``, ``pgd_l2_acc@<eps>``): the robustness curve.

The attack at the config's ``attack_eps`` and PGD at its ``pgd_linf_eps`` / ``pgd_l2_eps`` run exactly as
in evaluation.evaluate_model, so those points of the curves equal the claims' single-budget rows.
"""
from __future__ import annotations

import math

import torch

from ..attacks import SIMILARITIES, attacked_maps, attribution_similarity
from ..data import ImageDataset
from .config import ExperimentConfig
from .evaluation import EVAL_BATCH, _pgd_accuracy

ATTACK_BUDGETS = (0.01, 0.02, 0.05, 0.1)
PGD_LINF_BUDGETS = (0.0, 0.02, 0.05, 0.1, 0.2)
PGD_L2_BUDGETS = (0.5, 1.0, 2.0)
#: Per attack budget: each similarity under the attack, under noise, on unit-norm maps, and the unit-map distance.
ATTACK_MEASURES = (*SIMILARITIES, *(f"{m}_random" for m in SIMILARITIES), *(f"{m}_unit" for m in SIMILARITIES),
                   "unit_l2", "unit_l2_random")
#: Higher is more robust for every measure but the distances.
LOWER_IS_BETTER = ("unit_l2", "unit_l2_random")


def key(measure: str, eps: float) -> str:
    """The score key of ``measure`` at budget ``eps``: ``"kendall_tau@0.05"``."""
    return f"{measure}@{eps:g}"


def unit_norm(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its L2 norm (float64; an all-zero map stays zero)."""
    flat = maps.detach().flatten(1).double()
    norm = flat.norm(dim=1, keepdim=True)
    return (flat / torch.where(norm > 0, norm, torch.ones_like(norm))).view(maps.shape)


def unit_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean_i || a_i / ||a_i|| - b_i / ||b_i|| ||_2 over the pairs where neither map is zero (nan if none)."""
    ua, ub = unit_norm(a).flatten(1), unit_norm(b).flatten(1)
    keep = (ua.norm(dim=1) > 0) & (ub.norm(dim=1) > 0)
    return (ua[keep] - ub[keep]).norm(dim=1).mean().item() if keep.any() else float("nan")


def _measures(before: torch.Tensor, after: torch.Tensor, k: int, suffix: str) -> dict:
    out = {f"{m}{suffix}": v for m, v in attribution_similarity(before, after, k).items()}
    out[f"unit_l2{suffix}"] = unit_l2(before, after)
    return out


def budget_scores(model: torch.nn.Module, test: ImageDataset, cfg: ExperimentConfig, seed: int) -> dict:
    """Every key of the module docstring for one trained model (``seed``: the run's, as in evaluation)."""
    model.eval()
    n = min(cfg.eval_samples, len(test.y))
    x, y = test.x[:n], test.y[:n]
    out = {}
    for eps in ATTACK_BUDGETS:
        before, after, noisy = attacked_maps(model, x, y, eps=eps, k=cfg.topk, steps=cfg.attack_steps,
                                             noise_seed=seed, batch_size=EVAL_BATCH)
        got = {**_measures(before, after, cfg.topk, ""), **_measures(before, noisy, cfg.topk, "_random")}
        got.update({f"{m}_unit": v for m, v in attribution_similarity(unit_norm(before), unit_norm(after), cfg.topk).items()})
        out.update({key(m, eps): got[m] for m in ATTACK_MEASURES})
    for norm, budgets in (("linf", PGD_LINF_BUDGETS), ("l2", PGD_L2_BUDGETS)):
        for eps in budgets:
            out[key(f"pgd_{norm}_acc", eps)] = _pgd_accuracy(model, x, y, eps=eps, norm=norm, steps=cfg.pgd_steps,
                                                             seed=seed)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
