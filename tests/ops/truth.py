"""Float64 ground truth and the error metrics for the fused energy head tests.

Truth: with p0 = softmax(z0), d = z1 - z0 (exact in float64 for fp32 inputs), dbar = sum_k p0_k d_k
and u = d - dbar, the identity D = dbar + log(sum_k p0_k exp(u_k)) = dbar + log1p(sum_k p0_k (expm1(u_k) - u_k))
holds exactly (sum_k p0_k u_k = 0), and every term of the last sum is >= 0, so float64 evaluates it to
~1e-15 of the scale below. The float64 naive difference would carry ~1e-13 absolute error at logit scale
1000, too coarse to judge a 1e-5 bound at d ~ 1e-7, and log1p(sum p0 expm1(d)) cancels when p0 sits on
a class with d << 0.

Metric: |D - D_true| / (|D_true| + sum_k softmax(z0)_k |z1_k - z0_k|). D itself can cancel to ~0,
so a plain relative error would be unfair; this scale is what the difference is made of.
"""
import torch


def make_logits(batch, classes, scale, diff, seed=0, dtype=torch.float32):
    """z0 ~ scale * N(0, 1); z1 = z0 + diff * N(0, 1), both rounded to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    z0 = (torch.randn(batch, classes, generator=gen, dtype=torch.float64) * scale).to(dtype)
    z1 = (z0.double() + diff * torch.randn(batch, classes, generator=gen, dtype=torch.float64)).to(dtype)
    return z0, z1


def true_difference(z0, z1):
    a, b = z0.double(), z1.double()
    p0 = torch.softmax(a, dim=1)
    d = b - a
    dbar = (p0 * d).sum(dim=1, keepdim=True)
    u = d - dbar
    truth = dbar[:, 0] + torch.log1p((p0 * (torch.expm1(u) - u)).sum(dim=1))
    return truth, (p0 * d.abs()).sum(dim=1)


def scaled_error(D, z0, z1):
    """Max over rows of |D - D_true| / max(|D_true| + sum_k p0_k |d_k|, tiny(D.dtype)).

    The scale is floored at the smallest normal number of D's dtype (2^-126 for fp32): a result below
    the normal range is subnormal and cannot carry relative precision. This only matters when every
    difference sits on classes with p0 < 1e-38 (e.g. scale-20 logits with 1e-7 steps, where most
    fp32 differences round to exactly 0).
    """
    truth, scale = error_scale(z0, z1, D.dtype)
    return ((D.double() - truth).abs() / scale).max().item()


def error_scale(z0, z1, dtype):
    """(D_true, |D_true| + sum_k p0_k |d_k| floored at tiny(dtype)): the denominator of scaled_error."""
    truth, spread = true_difference(z0, z1)
    return truth, (truth.abs() + spread).clamp_min(torch.finfo(dtype).tiny)


def relative_max_error(x, ref):
    """max |x - ref| / max |ref|: the gradient error metric."""
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def assert_stats_match_reference(stats, ref_stats):
    """Row maxima [m0, m1] exactly as the torch reference's; log-sums within 1e-6 (a few fp32 ulps of a
    sum taken in another order)."""
    torch.testing.assert_close(stats[:, [0, 2]], ref_stats[:, [0, 2]], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(stats[:, [1, 3]], ref_stats[:, [1, 3]], rtol=1e-6, atol=1e-6, equal_nan=True)
