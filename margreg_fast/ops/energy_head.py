r"""The fused energy head op: differentiable D = logsumexp(z1) - logsumexp(z0), penalty and CE.

Public entry points:

* :func:`energy_difference` -- D per row, in the stabilised form of :mod:`.reference`.
* :func:`energy_penalty` -- the finite-difference penalty (D / h)^2 and, with targets, the
  cross-entropy of z0, both from one kernel pass; its backward is one more pass giving dz0 and dz1.

Per-sample outputs are float32 for fp32/bf16/fp16 logits (accumulated in fp32) and float64 for
float64 logits. Gradients come back in the logits' dtype.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import backends
from .validation import Step, check_head_step, check_head_target, check_logits


class _RefuseSecondOrder(torch.autograd.Function):
    """Identity on the head op's gradients whose own backward raises: they are not twice differentiable."""

    @staticmethod
    def forward(ctx, anchor, *grads):
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError("the energy head op (energy_penalty / energy_difference) is not twice differentiable: "
                           "its gradient cannot be differentiated again (use a method that needs only first "
                           "derivatives of the head, or the plain torch.logsumexp for double backprop)")


def _refuse_second_order(grads, sources):
    """``grads`` unchanged, but differentiating them raises when a graph is being built (create_graph)
    and any of ``sources`` (the op's inputs and incoming gradients) requires grad."""
    if not torch.is_grad_enabled():  # the usual first-order backward
        return grads
    anchor = next((t for t in sources if isinstance(t, torch.Tensor) and t.requires_grad), None)
    if anchor is None:
        return grads
    return _RefuseSecondOrder.apply(anchor, *grads)


class _EnergyHead(torch.autograd.Function):
    """Autograd bridge to a backend: forward -> (D, ce, penalty); backward -> one fused pass for dz0, dz1.

    The backward is once-differentiable: differentiating it again raises instead of silently
    dropping the second-order terms (the finite-difference estimators never need them). The
    gradients it returns under ``create_graph=True`` carry a node that raises when reached, whether
    the graph leads back to the logits, the step or the incoming gradients.
    """

    @staticmethod
    def forward(ctx, z0, z1, target, step, ignore_index, backend):
        impl = backends.BACKENDS[backend]
        D, ce, stats = impl.forward(z0, z1, target, ignore_index)
        # The penalty (D / h)^2 is formed here rather than by autograd ops on D, so its gradient folds
        # into the one kernel pass of the backward.
        penalty = D.new_empty(0) if step is None else (D / step) ** 2
        step_tensor = step if isinstance(step, torch.Tensor) else None
        ctx.save_for_backward(z0, z1, target, stats, D, step_tensor)
        ctx.step = None if step_tensor is not None else step
        ctx.ignore_index, ctx.backend, ctx.has_target = ignore_index, backend, target is not None
        if target is None:
            ctx.mark_non_differentiable(ce)
        if step is None:
            ctx.mark_non_differentiable(penalty)
        return D, ce, penalty

    @staticmethod
    def backward(ctx, grad_d, grad_ce, grad_penalty):
        z0, z1, _, _, _, step_tensor = ctx.saved_tensors
        with torch.no_grad():
            dz0, dz1, grad_h = _EnergyHead._first_order(ctx, grad_d, grad_ce, grad_penalty)
        grads = _refuse_second_order((dz0, dz1) if grad_h is None else (dz0, dz1, grad_h),
                                     (z0, z1, step_tensor, grad_d, grad_ce, grad_penalty))
        return grads[0], grads[1], None, grads[2] if grad_h is not None else None, None, None

    @staticmethod
    def _first_order(ctx, grad_d, grad_ce, grad_penalty):
        r"""dL/dD = g_D + g_P * 2 D / h^2 goes to one fused kernel pass; dL/dh = -g_P * 2 D^2 / h^3."""
        z0, z1, target, stats, D, step_tensor = ctx.saved_tensors
        h = ctx.step if step_tensor is None else step_tensor
        grad_h = None
        if grad_penalty is not None and h is not None:
            dpenalty_dd = D * (2.0 / (h * h))
            grad_d = grad_penalty * dpenalty_dd if grad_d is None else torch.addcmul(grad_d, grad_penalty, dpenalty_dd)
            grad_d = grad_d.to(D.dtype)  # a tensor step of another float dtype promotes it
            if step_tensor is not None and ctx.needs_input_grad[3]:
                grad_h = -grad_penalty * D * dpenalty_dd / h
                grad_h = (grad_h.sum().reshape(h.shape) if h.dim() == 0 else grad_h).to(h.dtype)
        elif grad_d is None:
            grad_d = torch.zeros_like(D)
        if not ctx.has_target:
            grad_ce = None
        # Every backend takes the per-row gradients in any layout (the one from .sum() is expanded).
        dz0, dz1 = backends.BACKENDS[ctx.backend].backward(z0, z1, target, ctx.ignore_index, stats, grad_d, grad_ce)
        return dz0, dz1, grad_h


class EnergyPenalty(NamedTuple):
    """Per-sample results of :func:`energy_penalty`."""

    penalty: torch.Tensor  #: (D / h)^2, shape (B,)
    ce: Optional[torch.Tensor]  #: cross-entropy of z0 (0 on ignore_index rows); None without targets
    difference: torch.Tensor  #: D = logsumexp(z1) - logsumexp(z0), shape (B,)


def _head(z0, z1, target, step, ignore_index, backend):
    check_logits(z0, z1)
    step = None if step is None else check_head_step(step, z0.shape[0], z0.device)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    name = backends.resolve(backend, z0.device)
    target = check_head_target(target, z0, ignore_index, check_range=not backends.BACKENDS[name].CHECKS_TARGET_RANGE)
    return _EnergyHead.apply(z0, z1, target, step, ignore_index, name)


def energy_difference(z0: torch.Tensor, z1: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """D = logsumexp(z1, 1) - logsumexp(z0, 1) per row, without catastrophic cancellation.

    Args:
        z0, z1: logits of shape (B, C), same dtype and device. Any layout.
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"``.

    Returns:
        D of shape (B,), float32 (float64 for float64 logits). Differentiable in z0 and z1 with
        dD/dz1 = softmax(z1) and dD/dz0 = -softmax(z0).
    """
    D, _, _ = _head(z0, z1, None, None, -100, backend)
    return D


def energy_penalty(
    z0: torch.Tensor,
    z1: torch.Tensor,
    step: Step,
    target: Optional[torch.Tensor] = None,
    *,
    ignore_index: int = -100,
    backend: str = "auto",
) -> EnergyPenalty:
    """Finite-difference marginal-density penalty ((logsumexp(z1) - logsumexp(z0)) / h)^2 per row.

    Args:
        z0: logits f(x), shape (B, C).
        z1: logits f(x + h v) at the stepped input, same shape, dtype and device.
        step: h > 0, a float or a tensor of shape () or (B,). A tensor step gets a gradient too.
        target: optional int class indices (B,); then the per-sample CE of z0 comes from the same
            pass (rows equal to ``ignore_index`` give 0).
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"``.
    """
    D, ce, penalty = _head(z0, z1, target, step, ignore_index, backend)
    return EnergyPenalty(penalty, ce if target is not None else None, D)
