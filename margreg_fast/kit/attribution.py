"""Attribution maps through Captum: input gradient, Integrated Gradients, zero ablation.

For the target logit z_t(x):
- "saliency": d z_t / d x (signed; Captum Saliency with abs=False).
- "integrated_gradients": (x - 0) * integral_0^1 d z_t / d x (a x) da (Captum IntegratedGradients,
  zero baseline, Gauss-Legendre quadrature with ``n_steps`` nodes).
- "ablation": z_t(x) - z_t(x with pixel j set to 0), one pixel at a time (Captum FeatureAblation,
  baseline 0), the paper's zero-ablation attribution.
For a linear model z = W x + b these are W_t, x * W_t and x * W_t exactly.
"""
from __future__ import annotations

import numbers

import torch
from captum.attr import FeatureAblation, IntegratedGradients, Saliency

from .metrics import evaluating
from .validation import check_class_indices

METHODS = ("saliency", "integrated_gradients", "ablation")


def attribute(model: torch.nn.Module, x: torch.Tensor, target, *, method: str = "saliency", n_steps: int = 32,
              internal_batch_size: int | None = None, perturbations_per_eval: int = 16) -> torch.Tensor:
    """Attribution of the ``target`` logit (int or (N,) tensor) to each pixel of ``x``, shaped like x.

    ``n_steps``/``internal_batch_size`` configure Integrated Gradients (default: one quadrature node of
    the whole batch per forward, N inputs, the fastest on a CPU); ``perturbations_per_eval``
    the number of ablated pixels per forward batch of the ablation method. The model runs in eval
    mode (restored afterwards); no parameter gradients are accumulated.
    """
    if not torch.is_tensor(target) and (isinstance(target, bool) or not isinstance(target, numbers.Integral)):
        raise TypeError(f"target must be an int or a tensor of integer class indices, got {type(target).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if torch.is_tensor(target):
        check_class_indices(target, "target")  # a float target would be truncated silently
        target = target.to(device=x.device, dtype=torch.int64)
        if target.dim() == 1 and target.shape[0] != x.shape[0]:
            raise ValueError(f"target has {target.shape[0]} entries for {x.shape[0]} inputs")
    x = x.detach()
    with evaluating(model):
        if method == "saliency":
            out = Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=False)
        elif method == "integrated_gradients":
            out = IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=n_steps,
                                                       method="gausslegendre",
                                                       internal_batch_size=internal_batch_size or x.shape[0])
        else:
            with torch.no_grad():
                out = FeatureAblation(model).attribute(x, baselines=0.0, target=target,
                                                       perturbations_per_eval=perturbations_per_eval)
    return out.detach()
