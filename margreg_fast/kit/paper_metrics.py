r"""Feature leakage and the insertion game in the units of the paper's Figure 1 (Yang et al. 2024).

The paper does not publish its definitions; these are the ones whose scale matches its printed
numbers (DESIGN.md section 5). For attributions a_i (N, ...) and a bool null mask M_i (N, ...):

- ``leakage_paper``: mean_i sum_{j in M_i} n_ij with n_ij = (|a_ij| - min_j |a_ij|) / (max_j |a_ij| -
  min_j |a_ij|), each image's |attribution| min-max normalised to [0, 1]; a count of "fully lit"
  pixels on the null block (0 .. |M_i|). Images with a constant |a_i| are left out.
- ``leakage_topk``: mean_i |top-k(|a_i|) & M_i| / k, k = ceil(fraction * d), d pixels per image: the
  share of the most attributed 5% of pixels that lies on the null block.
- ``insertion_curve_paper`` / ``insertion_auc_paper``: from a black image insert one pixel of x_i per
  step in descending (signed) attribution, ties in pixel order; after t insertions
  y_i(t) = max(0, z(x_i^(t)) / z(x_i)), z the target logit. The curve is mean_i y_i(t), t = 0..steps,
  and the AUC its trapezoid area with dx = 1 (at most ``steps``; the paper: 155 steps, 10% of 1568).
  Images whose own target logit z(x_i) <= 0 make the ratio meaningless and are left out.
- Two steadier variants of the same game (same steps, dx = 1): ``ratio_of_means_curve``,
  max(0, mean_i z(x_i^(t)) / mean_i z(x_i)) over the same images, and the probability curve
  mean_i p(x_i^(t)) over all images, p the target's softmax probability (the insertion metric of RISE,
  Petsiuk et al. 2018). The per-image
  ratio divides by each image's own logit, which a smoother model makes small, so a few images can
  dominate its mean; the variants cannot blow up that way.
"""
from __future__ import annotations

import math

import torch

from .metrics import _as_targets, _check_pairs, _target_logit, predict_logits


def _abs_maps(name: str, attr: torch.Tensor, null_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pairs(name, attr, null_mask)
    if null_mask.dtype != torch.bool:
        raise TypeError(f"{name}: null_mask must be bool, got {null_mask.dtype}")
    return attr.detach().abs().flatten(1).double(), null_mask.flatten(1)


def leakage_paper(attr: torch.Tensor, null_mask: torch.Tensor) -> float:
    """Mean over images of the null block's sum of min-max-normalised |attr| (module docstring); nan if
    every image has a constant |attr|."""
    a, mask = _abs_maps("leakage_paper", attr, null_mask)
    lo, hi = a.amin(1, keepdim=True), a.amax(1, keepdim=True)
    keep = (hi > lo).squeeze(1)
    normed = (a[keep] - lo[keep]) / (hi[keep] - lo[keep])
    per_image = (normed * mask[keep]).sum(1)
    return per_image.mean().item() if per_image.numel() else float("nan")


def leakage_topk(attr: torch.Tensor, null_mask: torch.Tensor, fraction: float = 0.05) -> float:
    """Mean over images of the share of the top ceil(fraction * d) pixels by |attr| (ties in pixel order)
    that lie on the null mask."""
    a, mask = _abs_maps("leakage_topk", attr, null_mask)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = math.ceil(fraction * a.shape[1])
    top = a.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return mask.gather(1, top).double().mean(1).mean().item()


def insertion_logits_paper(model: torch.nn.Module, x: torch.Tensor, attr: torch.Tensor, target, *, steps: int = 155,
                           batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The raw insertion game of the paper, per image: ``(z, full, prob)`` in float64 with z (steps + 1, N)
    the target logit after t = 0..steps inserted pixels, full (N,) the target logit of x itself and
    prob (steps + 1, N) the target's softmax probability after t inserted pixels."""
    _check_pairs("insertion_logits_paper", x, attr)
    flat = x.detach().flatten(1)
    if not 1 <= steps <= flat.shape[1]:
        raise ValueError(f"steps must be in [1, {flat.shape[1]}], got {steps}")
    n = x.shape[0]
    target = _as_targets(target, n, x.device)
    order = attr.detach().flatten(1).sort(dim=1, descending=True, stable=True).indices[:, :steps]
    full = _target_logit(model, x, target, batch_size).double()
    # rank[i, j] = position of pixel j in image i's insertion order (steps for pixels never inserted)
    rank = torch.full(flat.shape, steps, dtype=torch.int64, device=x.device)
    rank.scatter_(1, order, torch.arange(steps, device=x.device).expand(n, steps).contiguous())
    chunk = max(1, batch_size // max(n, 1))
    logits, probs = [], []
    for t0 in range(0, steps + 1, chunk):
        ts = torch.arange(t0, min(t0 + chunk, steps + 1), device=x.device)
        images = flat * (rank[None] < ts[:, None, None])  # (len(ts), N, d): the first t pixels inserted
        out = predict_logits(model, images.reshape(-1, *x.shape[1:]), batch_size).double()
        index = target.repeat(len(ts))[:, None]
        logits.append(out.gather(1, index).reshape(len(ts), n))
        probs.append(out.log_softmax(1).gather(1, index).exp().reshape(len(ts), n))
    return torch.cat(logits), full, torch.cat(probs)


def paper_ratio_curve(z: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The paper's curve mean_i max(0, z_i(t) / z_i(x)) over the images with z_i(x) > 0 (all-nan if none)."""
    keep = full > 0
    if not keep.any():
        return torch.full(z.shape[:1], float("nan"), dtype=torch.float64)
    return (z[:, keep] / full[keep]).clamp_min(0).mean(1)


def ratio_of_means_curve(z: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The robust variant max(0, mean_i z_i(t) / mean_i z_i(x)) over the same images as the paper's
    curve: one division by the mean logit instead of one per image, so an image whose own z_i(x) is
    near 0 cannot blow the mean up (all-nan if no image has z_i(x) > 0)."""
    keep = full > 0
    if not keep.any():
        return torch.full(z.shape[:1], float("nan"), dtype=torch.float64)
    return (z[:, keep].mean(1) / full[keep].mean()).clamp_min(0)


def insertion_curve_paper(model: torch.nn.Module, x: torch.Tensor, attr: torch.Tensor, target, *, steps: int = 155,
                          batch_size: int = 512) -> torch.Tensor:
    """(steps + 1,) float64 curve mean_i max(0, z(x_i^(t)) / z(x_i)) for t = 0..steps inserted pixels
    (module docstring); all-nan if no image has a positive target logit."""
    z, full, _ = insertion_logits_paper(model, x, attr, target, steps=steps, batch_size=batch_size)
    return paper_ratio_curve(z, full)


def curve_area_paper(curve: torch.Tensor) -> float:
    """Trapezoid area under an insertion curve sampled once per inserted pixel (dx = 1)."""
    return torch.trapezoid(curve, dx=1.0).item()


def insertion_auc_paper(model: torch.nn.Module, x: torch.Tensor, attr: torch.Tensor, target, *, steps: int = 155,
                        batch_size: int = 512) -> float:
    """``curve_area_paper(insertion_curve_paper(...))``: the paper's insertion AUC (higher is better)."""
    return curve_area_paper(insertion_curve_paper(model, x, attr, target, steps=steps, batch_size=batch_size))
