r"""The four estimators of R(x) = ||grad_x S(f(x))||^2 (S from :mod:`.quantities`) and its theta-gradient.

Costs below count passes through the model (F = forward, B_x = backward to the input only, B = the
training backward through everything that was built):

* ``exact``: g = grad_x S by ``autograd.grad(create_graph=True)``, R = ||g||^2. F + B_x(with graph)
  + double backward. Fails (clearly, see :mod:`.errors`) on ops without double backward.
* ``jvp``: g by one input-only backward, v = g / ||g|| detached, R = (d/de S(f(x + e v)) at e=0)^2
  from ``torch.func.jvp`` (forward mode over the reverse-mode g). Exact: d/de S = g . v = ||g||, and
  its theta-gradient 2 (g . v) (dg/dtheta . v) = d||g||^2/dtheta since v is parallel to g.
  F + B_x + a forward with tangents + B.
* ``fd``: R_fd = ((S(f(x + h v)) - S(f(x))) / h)^2, error O(h). F + B_x + F + B. The input
  gradient comes from the same forward as the logits (so an extra forward is only the one at x + h v)
  and asks autograd for grad w.r.t. x only: no parameter gradients are computed for it.
* ``central``: ((S(f(x + h v)) - S(f(x - h v))) / 2h)^2, error O(h^2). One more forward than fd.

v is detached (the gradient is not differentiated through the direction). Extra forwards go through
:func:`.probe.probe_forward` (no second update of BatchNorm running statistics).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import errors
from .probe import probe_forward
from .quantities import QUANTITIES, difference_penalty, value
from .steps import Step, broadcast_step, resolve_step, unit_direction

METHODS = ("exact", "jvp", "fd", "central")


class Estimate(NamedTuple):
    """Per-sample results, all of shape (B,)."""

    penalty: torch.Tensor  #: estimate of R(x), differentiable in the model's parameters
    ce: Optional[torch.Tensor]  #: CE of the logits at x (only when asked for)
    grad_norm: torch.Tensor  #: ||grad_x S|| (detached)


def _logits_and_grad_source(model: nn.Module, x: torch.Tensor, logits: Optional[torch.Tensor]
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_in, z0, zg): z0 = the logits at x; zg = logits computed from x_in (requires grad) for grad_x.

    Without ``logits`` one forward serves both. With ``logits`` computed from an x that requires
    grad they serve both too; otherwise the gradient needs a probe forward of a grad-enabled copy.
    """
    if logits is None:
        x_in = x if x.requires_grad else x.detach().requires_grad_(True)
        z0 = model(x_in)
        return x_in, z0, z0
    if x.requires_grad:
        return x, logits, logits
    x_in = x.detach().requires_grad_(True)
    return x_in, logits, probe_forward(model, x_in)


def _input_gradient(s: torch.Tensor, x_in: torch.Tensor, logits_given: bool, create_graph: bool) -> torch.Tensor:
    (g,) = torch.autograd.grad(s.sum(), x_in, retain_graph=True, create_graph=create_graph, allow_unused=True)
    if g is None:
        if logits_given:
            raise ValueError("logits do not depend on x: pass the logits of model(x) computed from this x")
        g = torch.zeros_like(x_in)
    return g


def estimate(model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor], *, quantity: str, method: str,
             step: Step, logits: Optional[torch.Tensor] = None, backend: str = "auto",
             with_ce: bool = False) -> Estimate:
    """Estimate R(x) per sample with ``method`` (arguments validated by the caller)."""
    with torch.enable_grad():  # grad_x is needed even when called under torch.no_grad() (evaluation)
        x_in, z0, zg = _logits_and_grad_source(model, x, logits)
        s = value(quantity, zg, target)
        if method == "exact":
            errors.check_fsdp_exact(model)
            try:
                g = _input_gradient(s, x_in, logits is not None, create_graph=True)
            except RuntimeError as err:
                if errors.is_derivative_error(err):
                    raise errors.unsupported(method, err) from err
                raise
            errors.check_twice_differentiable(g, method)
        else:
            g = _input_gradient(s, x_in, logits is not None, create_graph=False)
    ce = F.cross_entropy(z0, target, reduction="none") if with_ce and method != "fd" else None

    if method == "exact":
        r = g.flatten(1).pow(2).sum(dim=1)
        return Estimate(r, ce, r.detach().sqrt())

    v, g_norm = unit_direction(g)

    if method == "jvp":
        try:
            _, slope = torch.func.jvp(lambda xx: value(quantity, probe_forward(model, xx), target), (x,), (v,))
        except RuntimeError as err:  # NotImplementedError included
            if errors.is_derivative_error(err):
                raise errors.unsupported(method, err) from err
            raise
        return Estimate(slope ** 2, ce, g_norm)

    h = resolve_step(step, x, z0.dtype, order=1 if method == "fd" else 2)
    hv = broadcast_step(h, x) * v
    if method == "fd":
        z1 = probe_forward(model, x + hv)
        penalty, fused_ce = difference_penalty(quantity, z0, z1, h, target, backend, with_ce)
        return Estimate(penalty, fused_ce, g_norm)
    z_plus, z_minus = probe_forward(model, x + hv), probe_forward(model, x - hv)
    penalty, _ = difference_penalty(quantity, z_minus, z_plus, 2 * h, target, backend, False)
    return Estimate(penalty, ce, g_norm)


__all__ = ["METHODS", "QUANTITIES", "Estimate", "estimate"]
