r"""Triton kernels for the fused energy head: one program per row, online logsumexp over column blocks.

Implements the semantics of :mod:`margreg_fast._ops.reference` (read it first). For each row, with
a = z0, b = z1 (upcast to fp32, or fp64 for fp64 logits) and d = b - a:

Forward, pass 1 (online, one read of both rows in blocks of ``BLOCK`` columns), after
flash-attention's ``cross_entropy.py`` and Liger-Kernel's cross-entropy:

    m0 <- max(m0, max_blk a),   alpha = exp(m0_old - m0)
    s0 <- s0 alpha + sum_blk exp(a - m0)            (-> sum_k exp(a_k - m0))
    t0 <- t0 alpha + sum_blk exp(a - m0) d          (-> sum_k exp(a_k - m0) d_k, so dbar = t0 / s0)
    m1, s1 likewise for b; flags for NaN/+inf entries and for classes masked (-inf) in one row only.

Forward, pass 2 (second read): S = sum_k exp(a_k - m0) phi(d_k - dbar) / s0 and whether some
u_k = d_k - dbar exceeds U_MAX; then D = dbar + log1p(S), or the max-shifted fallback
(m1 - m0) + (log s1 - log s0) on the reference's fallback rows. CE = log s0 - (a_y - m0).

Backward (one read, one write): dz0 = (gCE - gD) p0 - gCE onehot(y), dz1 = gD p1, with
p = exp(z - m - log s) rebuilt from the saved statistics.

A running max that is still -inf (a row prefix that is all masked) is replaced by 0 as the shift,
so exp(-inf - (-inf)) never appears; rows holding NaN/+inf get the reference's statistics
(m = 0, log s = NaN if a NaN is present, else +inf) and D = NaN.

On a GPU each program owns one row. The kernels are written for a (ROWS, BLOCK) tile so that the
interpreter, which runs programs one after another at a fixed Python cost per reduction, can give a
program many rows (ROWS > 1 only there; see _launch_config). Row offsets are computed in int64.
Inputs are made contiguous by the wrappers. Dtypes: fp32, fp16,
bf16 (loaded and accumulated in fp32) and fp64 (accumulated in fp64), on CUDA and under the
interpreter alike.

Availability: CUDA tensors need triton and a GPU. CPU tensors run only under the Triton interpreter,
which triton enables when ``TRITON_INTERPRET=1`` (or true/on/yes) is set in the environment *when
this module is imported* (``triton.jit`` reads it at decoration time); CI's ``make test`` sets it.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch

from .reference import PHI_SERIES_CUTOFF, U_MAX
from .validation import accumulation_dtype

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as err:  # triton is optional: the torch and native backends do not need it
    _IMPORT_ERROR = err

#: Largest column block one program holds at a time (per input row); rows wider than this loop.
MAX_BLOCK_SIZE = 4096
#: Below this value, log1p(S) is evaluated by a series instead of log(1 + S) (see the forward kernel).
LOG1P_SERIES_CUTOFF = 0.25
#: Under the interpreter only: elements per (rows x columns) tile of one program (see _launch_config).
INTERPRETER_TILE = 1 << 15

_INTERPRETED = _IMPORT_ERROR is None and bool(triton.knobs.runtime.interpret)


#: Targets are range-checked in Python before this backend runs (validation.check_head_target).
CHECKS_TARGET_RANGE = False


def is_available(device: torch.device) -> bool:
    """CUDA tensors with triton and a GPU; CPU tensors only under the Triton interpreter."""
    if _IMPORT_ERROR is not None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and _INTERPRETED


def unavailable_reason(device: torch.device) -> str:
    if _IMPORT_ERROR is not None:
        return f"triton cannot be imported ({_IMPORT_ERROR}); install it with pip install 'margreg_fast[triton]'"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is available"
    if device.type == "cpu" and not _INTERPRETED:
        return ("Triton runs CPU tensors only through its interpreter: set TRITON_INTERPRET=1 in the "
                "environment before importing margreg_fast")
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels run on CUDA (or CPU under the interpreter), not on {device.type}"
    return ""


if _IMPORT_ERROR is None:

    @triton.jit
    def _exp(x, PRECISE: tl.constexpr):
        """exp(x). On a GPU, tl.exp is ex2.approx(fl(x log2 e)), whose rounded product costs ~|x| 2^-24
        relative (1e-6 at x = -16, where softmax entries of wide rows sit); libdevice's expf reduces the
        argument exactly and stays within 2 ulp. The interpreter has no libdevice; numpy's exp is exact
        to an ulp there."""
        if PRECISE:
            return libdevice.exp(x)
        else:
            return tl.exp(x)

    @triton.jit
    def _load_differences(z0_rows, z1_rows, idx, inside, ACC: tl.constexpr):
        """One (ROWS, BLOCK) tile of z0 and z1 (-inf outside the row) and d = z1 - z0, with d = 0 where a
        class is masked (-inf) in both rows (the reference's rule; it carries no probability mass)."""
        a = tl.load(z0_rows + idx, mask=inside, other=float("-inf")).to(ACC)
        b = tl.load(z1_rows + idx, mask=inside, other=float("-inf")).to(ACC)
        d = tl.where((a == float("-inf")) & (b == float("-inf")), 0.0, b - a)
        return a, b, d

    @triton.jit
    def _forward_kernel(
        z0_ptr, z1_ptr, target_ptr, d_ptr, ce_ptr, stats_ptr,
        n_rows, n_cols, ignore_index,
        HAS_TARGET: tl.constexpr, ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
        U_CAP: tl.constexpr, PHI_CUTOFF: tl.constexpr, LOG1P_CUTOFF: tl.constexpr, PRECISE_EXP: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < n_rows
        z0_rows = z0_ptr + rows[:, None] * n_cols  # (ROWS, 1) pointers, int64 offsets
        z1_rows = z1_ptr + rows[:, None] * n_cols
        cols = tl.arange(0, BLOCK)[None, :]
        neg_inf = float("-inf")

        # pass 1: online max and rescaled sums; NaN/+inf and one-sided masks as flags
        m0 = tl.full((ROWS,), neg_inf, ACC)
        m1 = tl.full((ROWS,), neg_inf, ACC)
        s0 = tl.zeros((ROWS,), ACC)
        s1 = tl.zeros((ROWS,), ACC)
        t0 = tl.zeros((ROWS,), ACC)
        bad0 = tl.zeros((ROWS,), ACC)  # sum of z0's NaN/+inf entries: 0, +inf or NaN
        bad1 = tl.zeros((ROWS,), ACC)
        n_mismatch = tl.zeros((ROWS,), tl.int32)
        for start in range(0, n_cols, BLOCK):
            idx = start + cols
            inside = row_ok[:, None] & (idx < n_cols)
            a, b, d = _load_differences(z0_rows, z1_rows, idx, inside, ACC)
            masked0 = a == neg_inf
            masked1 = b == neg_inf
            bad0 += tl.sum(tl.where((a != a) | (a == float("inf")), a, 0.0), axis=1)
            bad1 += tl.sum(tl.where((b != b) | (b == float("inf")), b, 0.0), axis=1)
            n_mismatch += tl.sum((masked0 != masked1).to(tl.int32), axis=1)

            m0_new = tl.maximum(m0, tl.max(a, axis=1))
            shift0 = tl.where(m0_new == neg_inf, 0.0, m0_new)  # never exp(-inf - (-inf))
            alpha0 = _exp(m0 - shift0, PRECISE_EXP)
            e0 = _exp(a - shift0[:, None], PRECISE_EXP)
            s0 = s0 * alpha0 + tl.sum(e0, axis=1)
            t0 = t0 * alpha0 + tl.sum(e0 * d, axis=1)
            m0 = m0_new

            m1_new = tl.maximum(m1, tl.max(b, axis=1))
            shift1 = tl.where(m1_new == neg_inf, 0.0, m1_new)
            s1 = s1 * _exp(m1 - shift1, PRECISE_EXP) + tl.sum(_exp(b - shift1[:, None], PRECISE_EXP), axis=1)
            m1 = m1_new

        # the reference's statistics: m = row max (0 when not finite), log s = log sum exp(z - m)
        invalid = (bad0 != 0.0) | (bad1 != 0.0)
        m0 = tl.where((m0 == neg_inf) | (bad0 != 0.0), 0.0, m0)
        m1 = tl.where((m1 == neg_inf) | (bad1 != 0.0), 0.0, m1)
        log_s0 = tl.where(bad0 != 0.0, bad0, tl.log(s0))
        log_s1 = tl.where(bad1 != 0.0, bad1, tl.log(s1))
        dbar = t0 / s0

        # pass 2: S = sum_k p0_k phi(u_k), u = d - dbar, and whether some u_k > U_CAP
        acc = tl.zeros((ROWS,), ACC)
        n_large = tl.zeros((ROWS,), tl.int32)
        for start in range(0, n_cols, BLOCK):
            idx = start + cols
            inside = row_ok[:, None] & (idx < n_cols)
            a, _, d = _load_differences(z0_rows, z1_rows, idx, inside, ACC)
            u = d - dbar[:, None]
            n_large += tl.sum(((u > U_CAP) & inside).to(tl.int32), axis=1)
            # phi(u) = exp(u) - 1 - u: Taylor series to u^10 (Horner) for |u| < PHI_CUTOFF, else direct
            series = u * 2.7557319223985893e-07 + 2.7557319223985888e-06  # 1/10!, 1/9!
            series = series * u + 2.4801587301587302e-05  # 1/8!
            series = series * u + 1.9841269841269841e-04  # 1/7!
            series = series * u + 1.3888888888888889e-03  # 1/6!
            series = series * u + 8.3333333333333332e-03  # 1/5!
            series = series * u + 4.1666666666666664e-02  # 1/4!
            series = series * u + 1.6666666666666666e-01  # 1/3!
            series = (series * u + 0.5) * u * u  # 1/2!
            direct = _exp(tl.minimum(u, U_CAP), PRECISE_EXP) - 1.0 - u
            phi = tl.where(tl.abs(u) < PHI_CUTOFF, series, direct)
            acc += tl.sum(_exp(a - m0[:, None], PRECISE_EXP) * phi, axis=1)

        # log1p(S), S >= 0 (Triton has no log1p; log(1 + S) would round away every bit of S below
        # 2^-24): for S < LOG1P_CUTOFF (1/4), log1p(S) = 2 atanh(w) = 2 (w + w^3/3 + ... + w^13/13) with
        # w = S / (2 + S) <= 1/9 (truncation < w^14/15 < 4e-15 relative); otherwise log(1 + S), where
        # log1p(S) > 0.22, so rounding 1 + S costs < 3e-7 relative.
        S = acc / s0
        w = S / (2.0 + S)
        w2 = w * w
        series = w2 * (1.0 / 13.0) + 1.0 / 11.0
        series = series * w2 + 1.0 / 9.0
        series = series * w2 + 1.0 / 7.0
        series = series * w2 + 1.0 / 5.0
        series = series * w2 + 1.0 / 3.0
        series = 2.0 * w * (series * w2 + 1.0)
        centred = dbar + tl.where(S < LOG1P_CUTOFF, series, tl.log(1.0 + S))

        # fallback: max-shifted difference (lse1 - lse0 when a row is entirely -inf)
        lse0 = m0 + log_s0
        lse1 = m1 + log_s1
        shifted = tl.where((lse0 != neg_inf) & (lse1 != neg_inf), (m1 - m0) + (log_s1 - log_s0), lse1 - lse0)
        D = tl.where((n_mismatch > 0) | (n_large > 0), shifted, centred)
        D = tl.where(invalid, float("nan"), D)
        tl.store(d_ptr + rows, D, mask=row_ok)

        if HAS_TARGET:
            y = tl.load(target_ptr + rows, mask=row_ok, other=ignore_index)
            valid = y != ignore_index
            picked = tl.load(z0_ptr + rows * n_cols + tl.where(valid, y, 0), mask=row_ok & valid, other=0.0)
            ce = tl.where(valid, log_s0 - (picked.to(ACC) - m0), 0.0)
            ce = tl.where(valid & invalid, float("nan"), ce)
            tl.store(ce_ptr + rows, ce, mask=row_ok)

        tl.store(stats_ptr + rows * 4 + 0, m0, mask=row_ok)
        tl.store(stats_ptr + rows * 4 + 1, log_s0, mask=row_ok)
        tl.store(stats_ptr + rows * 4 + 2, m1, mask=row_ok)
        tl.store(stats_ptr + rows * 4 + 3, log_s1, mask=row_ok)

    @triton.jit
    def _backward_kernel(
        z0_ptr, z1_ptr, target_ptr, stats_ptr, grad_d_ptr, grad_ce_ptr, dz0_ptr, dz1_ptr,
        n_rows, n_cols, ignore_index,
        HAS_CE: tl.constexpr, ACC: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, PRECISE_EXP: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < n_rows
        offsets = rows[:, None] * n_cols  # int64
        cols = tl.arange(0, BLOCK)[None, :]
        m0 = tl.load(stats_ptr + rows * 4 + 0, mask=row_ok, other=0.0)[:, None]
        log_s0 = tl.load(stats_ptr + rows * 4 + 1, mask=row_ok, other=0.0)[:, None]
        m1 = tl.load(stats_ptr + rows * 4 + 2, mask=row_ok, other=0.0)[:, None]
        log_s1 = tl.load(stats_ptr + rows * 4 + 3, mask=row_ok, other=0.0)[:, None]
        g_d = tl.load(grad_d_ptr + rows, mask=row_ok, other=0.0)[:, None]
        if HAS_CE:
            y = tl.load(target_ptr + rows, mask=row_ok, other=ignore_index)
            g_ce = tl.where(y != ignore_index, tl.load(grad_ce_ptr + rows, mask=row_ok, other=0.0), 0.0)
        else:
            y = tl.full((ROWS,), -1, tl.int64)
            g_ce = tl.zeros((ROWS,), ACC)
        y = y[:, None]
        g_ce = g_ce[:, None]
        for start in range(0, n_cols, BLOCK):
            idx = start + cols
            inside = row_ok[:, None] & (idx < n_cols)
            a = tl.load(z0_ptr + offsets + idx, mask=inside, other=0.0).to(ACC)
            b = tl.load(z1_ptr + offsets + idx, mask=inside, other=0.0).to(ACC)
            p0 = _exp(a - m0 - log_s0, PRECISE_EXP)
            p1 = _exp(b - m1 - log_s1, PRECISE_EXP)
            dz0 = (g_ce - g_d) * p0 - tl.where(idx == y, g_ce, 0.0)
            tl.store(dz0_ptr + offsets + idx, dz0.to(dz0_ptr.dtype.element_ty), mask=inside)
            tl.store(dz1_ptr + offsets + idx, (g_d * p1).to(dz1_ptr.dtype.element_ty), mask=inside)


def _launch_config(n_rows: int, n_cols: int) -> Tuple[int, int, int, int]:
    """(grid, ROWS, BLOCK, num_warps).

    BLOCK is the row width padded to a power of two, capped at MAX_BLOCK_SIZE. On a GPU every program
    owns one row (ROWS = 1). The interpreter runs programs one after another and pays a fixed Python
    cost per reduction, so there a program takes a (ROWS, BLOCK) tile of about INTERPRETER_TILE
    elements instead; the kernel code is the same.
    """
    block = min(triton.next_power_of_2(n_cols), MAX_BLOCK_SIZE)
    rows = 1
    if _INTERPRETED:
        rows = min(triton.next_power_of_2(n_rows), 1 << (max(INTERPRETER_TILE // block, 1).bit_length() - 1))
    return triton.cdiv(n_rows, rows), rows, block, num_warps(block)


def num_warps(block: int) -> int:
    """Warps per program for a column block: one per 256 columns, 1 to 8.

    Not 16 at BLOCK 4096: with 512 threads ptxas caps a thread at 64 registers and the bf16 forward
    spilled on sm_90 (tests/ops/test_triton_aot.py builds every configuration and fails on spills).
    """
    return min(max(block // 256, 1), 8)


def forward_constants(has_target: bool, acc: torch.dtype, rows: int, block: int) -> dict:
    """The constexpr arguments of ``_forward_kernel`` (also what ahead-of-time builds compile)."""
    return dict(HAS_TARGET=has_target, ACC=_tl_acc(acc), ROWS=rows, BLOCK=block, U_CAP=U_MAX,
                PHI_CUTOFF=PHI_SERIES_CUTOFF, LOG1P_CUTOFF=LOG1P_SERIES_CUTOFF, PRECISE_EXP=not _INTERPRETED)


def backward_constants(has_ce: bool, acc: torch.dtype, rows: int, block: int) -> dict:
    """The constexpr arguments of ``_backward_kernel``."""
    return dict(HAS_CE=has_ce, ACC=_tl_acc(acc), ROWS=rows, BLOCK=block, PRECISE_EXP=not _INTERPRETED)


def _quiet():
    """The interpreter evaluates masked lanes too (e.g. -inf - -inf); silence numpy's warnings there."""
    if not _INTERPRETED:
        return contextlib.nullcontext()
    import numpy

    return numpy.errstate(invalid="ignore", over="ignore", divide="ignore")


@contextlib.contextmanager
def _launching(device: torch.device):
    """A launch on ``device``: under its CUDA device guard (tensors on cuda:1 launch on cuda:1, whatever
    the current device), and quiet under the interpreter."""
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard, _quiet():
        yield


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward(
    z0: torch.Tensor, z1: torch.Tensor, target: Optional[torch.Tensor], ignore_index: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D (B,), CE (B,; zeros without target) and stats (B, 4) = [m0, log s0, m1, log s1]."""
    batch, n_cols = z0.shape
    acc = accumulation_dtype(z0.dtype)
    D = torch.empty(batch, dtype=acc, device=z0.device)
    ce = torch.zeros(batch, dtype=acc, device=z0.device)
    stats = torch.empty(batch, 4, dtype=acc, device=z0.device)
    if batch == 0:
        return D, ce, stats
    z0, z1 = z0.contiguous(), z1.contiguous()
    target_arg = D if target is None else target.contiguous()  # never read without a target
    grid, rows, block, warps = _launch_config(batch, n_cols)
    with _launching(z0.device):
        _forward_kernel[(grid,)](
            z0, z1, target_arg, D, ce, stats, batch, n_cols, ignore_index,
            **forward_constants(target is not None, acc, rows, block), num_warps=warps,
        )
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
    """dz0 = (gCE - gD) p0 - gCE onehot(y), dz1 = gD p1, in the logits' dtype, from one pass."""
    batch, n_cols = z0.shape
    z0, z1 = z0.contiguous(), z1.contiguous()
    # The interpreter rounds fp32 -> bf16 toward zero where the GPU rounds to nearest even: there
    # the kernel writes fp32 and the host rounds.
    out_dtype = torch.float32 if _INTERPRETED and z0.dtype == torch.bfloat16 else z0.dtype
    dz0 = torch.empty(z0.shape, dtype=out_dtype, device=z0.device)
    dz1 = torch.empty(z1.shape, dtype=out_dtype, device=z1.device)
    if batch == 0:
        return dz0.to(z0.dtype), dz1.to(z1.dtype)
    has_ce = target is not None and grad_ce is not None
    stats, grad_d = stats.contiguous(), grad_d.to(stats.dtype).contiguous()
    target_arg = target.contiguous() if has_ce else grad_d  # never read without CE
    grad_ce_arg = grad_ce.to(stats.dtype).contiguous() if has_ce else grad_d
    grid, rows, block, warps = _launch_config(batch, n_cols)
    with _launching(z0.device):
        _backward_kernel[(grid,)](
            z0, z1, target_arg, stats, grad_d, grad_ce_arg, dz0, dz1, batch, n_cols, ignore_index,
            **backward_constants(has_ce, stats.dtype, rows, block), num_warps=warps,
        )
    return dz0.to(z0.dtype), dz1.to(z1.dtype)
