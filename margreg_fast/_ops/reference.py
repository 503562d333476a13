r"""Eager PyTorch reference of the fused energy head (any floating dtype, float64 included).

For each row, with logits z0 = f(x), z1 = f(x + h v), p0 = softmax(z0) and d = z1 - z0:

    D = logsumexp(z1) - logsumexp(z0) = log sum_k p0_k exp(d_k)

Subtracting two rounded logsumexps cancels catastrophically when d is small. We instead centre the
differences on their p0-mean dbar = sum_k p0_k d_k (so sum_k p0_k u_k = 0 with u = d - dbar) and
write

    D = dbar + log1p( sum_k p0_k * phi(u_k) ),     phi(u) = exp(u) - 1 - u >= 0.

Every term of the inner sum is non-negative, so nothing cancels: the error of D is a few ulps of
|D| + sum_k p0_k |d_k|. phi uses its Taylor series for |u| < 1/2 (where exp(u) - 1 - u would cancel).
A row falls back to the max-shifted difference (m1 - m0) + (log s1 - log s0) when the centred form
cannot apply: a class masked (-inf) in one row but not the other, or some u_k > U_MAX (exp would
overflow). Rows holding NaN or +inf give NaN; all -inf rows give NaN exactly like
``torch.logsumexp(z1) - torch.logsumexp(z0)``.

Backward: dD/dz1 = softmax(z1), dD/dz0 = -softmax(z0), dCE/dz0 = softmax(z0) - onehot(y); the
softmaxes are rebuilt from per-row statistics (m, log s) saved by the forward, so each input row is
read once more and each gradient row written once.

The module is the specification the Triton and native kernels implement; they must agree with it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .validation import accumulation_dtype

#: Above this centred difference the exp in phi could overflow fp32; such rows use the fallback.
U_MAX = 60.0
#: Below this |u|, phi(u) is evaluated by its Taylor series.
PHI_SERIES_CUTOFF = 0.5


#: Targets are range-checked in Python before this backend runs (validation.check_head_target).
CHECKS_TARGET_RANGE = False


def is_available(device: torch.device) -> bool:
    """The eager reference runs wherever torch does."""
    return True


def unavailable_reason(device: torch.device) -> str:
    return ""


def phi(u: torch.Tensor) -> torch.Tensor:
    """exp(u) - 1 - u without cancellation: Taylor series to u^10 for |u| < 1/2 (truncation < 1e-9 relative)."""
    series = torch.zeros_like(u)
    for k in range(10, 1, -1):  # Horner on u^2 * (1/2! + u/3! + ... + u^8/10!)
        series = series * u + 1.0 / _factorial(k)
    series = series * u * u
    direct = torch.exp(torch.clamp(u, max=U_MAX)) - 1.0 - u
    return torch.where(u.abs() < PHI_SERIES_CUTOFF, series, direct)


def _factorial(k: int) -> float:
    out = 1.0
    for i in range(2, k + 1):
        out *= i
    return out


def _row_max_and_log_sum(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row max m (0 where the row is all -inf), exp(z - m) and log sum exp(z - m)."""
    m = z.amax(dim=1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(z - m[:, None])
    return m, e, torch.log(e.sum(dim=1))


def forward(
    z0: torch.Tensor, z1: torch.Tensor, target: Optional[torch.Tensor], ignore_index: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns D (B,), CE of z0 (B,; zeros without target) and stats (B, 4) = [m0, log s0, m1, log s1]."""
    acc = accumulation_dtype(z0.dtype)
    a, b = z0.to(acc), z1.to(acc)
    m0, e0, log_s0 = _row_max_and_log_sum(a)
    m1, _, log_s1 = _row_max_and_log_sum(b)

    masked0, masked1 = torch.isneginf(a), torch.isneginf(b)
    invalid = (torch.isnan(a) | torch.isposinf(a) | torch.isnan(b) | torch.isposinf(b)).any(dim=1)
    mismatch = (masked0 != masked1).any(dim=1)
    d = torch.where(masked0 & masked1, torch.zeros_like(a), b - a)
    d = torch.where(invalid[:, None] | mismatch[:, None], torch.zeros_like(d), d)
    s0 = torch.exp(log_s0)
    dbar = (e0 * d).sum(dim=1) / s0
    u = d - dbar[:, None]
    too_large = (u > U_MAX).any(dim=1)
    centred = dbar + torch.log1p((e0 * phi(u)).sum(dim=1) / s0)

    lse0 = torch.where(torch.isneginf(a).all(dim=1), torch.full_like(m0, -float("inf")), m0 + log_s0)
    lse1 = torch.where(torch.isneginf(b).all(dim=1), torch.full_like(m1, -float("inf")), m1 + log_s1)
    shifted = torch.where(
        torch.isfinite(lse0) & torch.isfinite(lse1), (m1 - m0) + (log_s1 - log_s0), lse1 - lse0
    )
    D = torch.where(mismatch | too_large, shifted, centred)
    nan = torch.full_like(D, float("nan"))
    D = torch.where(invalid, nan, D)

    if target is None:
        ce = torch.zeros_like(D)
    else:
        valid = target != ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        picked = a.gather(1, safe[:, None])[:, 0]
        ce = torch.where(valid, log_s0 - (picked - m0), torch.zeros_like(D))
        ce = torch.where(invalid & valid, nan, ce)
    stats = torch.stack([m0, log_s0, m1, log_s1], dim=1)
    return D, ce, stats


def backward(
    z0: torch.Tensor,
    z1: torch.Tensor,
    target: Optional[torch.Tensor],
    ignore_index: int,
    stats: torch.Tensor,
    grad_d: torch.Tensor,
    grad_ce: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """dz0 = (gCE - gD) p0 - gCE onehot(y), dz1 = gD p1, returned in the logits' dtype."""
    acc = stats.dtype
    m0, log_s0, m1, log_s1 = stats.unbind(dim=1)
    p0 = torch.exp(z0.to(acc) - m0[:, None] - log_s0[:, None])
    p1 = torch.exp(z1.to(acc) - m1[:, None] - log_s1[:, None])
    dz1 = grad_d[:, None] * p1
    if target is None or grad_ce is None:
        dz0 = -grad_d[:, None] * p0
    else:
        valid = target != ignore_index
        g_ce = torch.where(valid, grad_ce, torch.zeros_like(grad_ce))
        dz0 = (g_ce - grad_d)[:, None] * p0
        safe = torch.where(valid, target, torch.zeros_like(target))
        dz0 = dz0.scatter_add(1, safe[:, None], -g_ce[:, None])
    return dz0.to(z0.dtype), dz1.to(z1.dtype)
