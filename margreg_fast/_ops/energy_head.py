r"""The fused energy head op: differentiable D = logsumexp(z1) - logsumexp(z0) and the CE of z0.

Public entry points:

* :func:`energy_difference` -- the primitive: (D, CE of z0) per row from one kernel pass, D in the
  stabilised form of :mod:`.reference`; its backward is one more pass giving dz0 and dz1. This is
  what the estimators call.
* :func:`energy_penalty` -- a thin wrapper forming the finite-difference penalty (D / h)^2 from it.

Per-sample outputs are float32 for fp32/bf16/fp16 logits (accumulated in fp32) and float64 for
float64 logits. Gradients come back in the logits' dtype.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import backends
from .validation import IGNORE_INDEX, HeadStep, check_head_step, check_head_target, check_ignore_index, check_logits


class _RefuseSecondOrder(torch.autograd.Function):
    """Identity on the head op's gradients whose own backward raises: they are not twice differentiable."""

    @staticmethod
    def forward(ctx, anchor, *grads):
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError("the energy head op (energy_penalty / energy_difference) is not twice differentiable: "
                           "its gradient cannot be differentiated again (use an estimator that needs only first "
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
    """Autograd bridge to a backend: forward -> (D, ce); backward -> one fused pass for dz0, dz1.

    dz0 = (g_ce - g_D) softmax(z0) - g_ce onehot(y), dz1 = g_D softmax(z1). The backward is
    once-differentiable: differentiating it again raises instead of silently dropping the
    second-order terms (the finite-difference estimators never need them). The gradients it returns
    under ``create_graph=True`` carry a node that raises when reached, whether the graph leads back
    to the logits or to the incoming gradients.
    """

    @staticmethod
    def forward(ctx, z0, z1, target, ignore_index, backend):
        D, ce, stats = backends.BACKENDS[backend].forward(z0, z1, target, ignore_index)
        ctx.save_for_backward(z0, z1, target, stats)
        ctx.ignore_index, ctx.backend, ctx.has_target = ignore_index, backend, target is not None
        if target is None:
            ctx.mark_non_differentiable(ce)
        return D, ce

    @staticmethod
    def backward(ctx, grad_d, grad_ce):
        z0, z1, target, stats = ctx.saved_tensors
        with torch.no_grad():
            g_d = torch.zeros(z0.shape[0], dtype=stats.dtype, device=z0.device) if grad_d is None else grad_d
            # Every backend takes the per-row gradients in any layout (the one from .sum() is expanded).
            dz0, dz1 = backends.BACKENDS[ctx.backend].backward(z0, z1, target, ctx.ignore_index, stats, g_d,
                                                               grad_ce if ctx.has_target else None)
        dz0, dz1 = _refuse_second_order((dz0, dz1), (z0, z1, grad_d, grad_ce))
        return dz0, dz1, None, None, None


class EnergyDifference(NamedTuple):
    """Per-sample results of :func:`energy_difference`, shape (B,)."""

    difference: torch.Tensor  #: D = logsumexp(z1) - logsumexp(z0)
    ce: Optional[torch.Tensor]  #: cross-entropy of z0 (0 on ignore_index rows); None without targets


class EnergyPenalty(NamedTuple):
    """Per-sample results of :func:`energy_penalty`, shape (B,)."""

    penalty: torch.Tensor  #: (D / h)^2
    ce: Optional[torch.Tensor]  #: cross-entropy of z0 (0 on ignore_index rows); None without targets
    difference: torch.Tensor  #: D = logsumexp(z1) - logsumexp(z0)


def energy_difference(z0: torch.Tensor, z1: torch.Tensor, target: Optional[torch.Tensor] = None, *,
                      ignore_index: int = IGNORE_INDEX, backend: str = "auto") -> EnergyDifference:
    """(D, CE of z0) per row: D = logsumexp(z1, 1) - logsumexp(z0, 1) without catastrophic cancellation.

    Args:
        z0: logits of shape (B, C). Any layout.
        z1: logits of the same shape, dtype and device as z0.
        target: optional integer class indices (B,); then the per-sample CE of z0 comes from the
            same pass (0 on rows equal to ``ignore_index``), else ``ce`` is None.
        ignore_index: the label of an unlabelled row (``F.cross_entropy``'s default).
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"``.

    Returns:
        :class:`EnergyDifference` (difference, ce), float32 (float64 for float64 logits).
        Differentiable in z0 and z1 with dD/dz1 = softmax(z1), dD/dz0 = -softmax(z0) and
        dCE/dz0 = softmax(z0) - onehot(y); the backward of both is one fused pass.
    """
    check_logits(z0, z1)
    check_ignore_index(ignore_index)
    name = backends.resolve(backend, z0.device)
    target = check_head_target(target, z0, ignore_index, check_range=not backends.BACKENDS[name].CHECKS_TARGET_RANGE)
    D, ce = _EnergyHead.apply(z0, z1, target, ignore_index, name)
    return EnergyDifference(D, ce if target is not None else None)


def energy_penalty(z0: torch.Tensor, z1: torch.Tensor, step: HeadStep, target: Optional[torch.Tensor] = None, *,
                   ignore_index: int = IGNORE_INDEX, backend: str = "auto") -> EnergyPenalty:
    """Finite-difference marginal-density penalty ((logsumexp(z1) - logsumexp(z0)) / h)^2 per row.

    A thin wrapper of :func:`energy_difference`: same arguments, plus

    Args:
        step: h > 0, a float or a tensor of shape () or (B,). A tensor step gets a gradient too,
            d(penalty)/dh = -2 D^2 / h^3.
    """
    D, ce = energy_difference(z0, z1, target, ignore_index=ignore_index, backend=backend)
    h = check_head_step(step, z0.shape[0], z0.device)
    return EnergyPenalty((D / h) ** 2, ce, D)
