"""The native C++ kernel (torch.ops.margreg_fast.*) against float64 truth and the eager reference.

Tolerances (none widened to pass):
* D: scaled error <= 1e-5 of |D| + sum_k p0_k |d_k| in fp32 (issue 2), <= 1e-12 in
  fp64 (the stabilised form keeps a few ulps of that scale; 1e-12 leaves ~4500 fp64 ulps for C = 50000
  summation terms).
* native vs reference (both fp32): the same 1e-5 scaled bound on D; CE and log-sums agree to
  assert_close's fp32 defaults (rtol 1.3e-6, atol 1e-5): both sum C fp32 exponentials, in different
  orders.
* gradients: max |err| / max |ref| <= 1e-6 against the float64 softmax formulas (issue 2).

The edge cases every backend shares (empty batch, strided inputs, masked classes, all -inf rows,
NaN / inf, ignore_index, half inputs) are tested once, for every backend, in test_energy_head*.py.
"""
import pytest
import torch

import margreg_fast as mf
from margreg_fast._ops import native, reference
from tests.ops.truth import make_logits, relative_max_error, scaled_error, true_difference

OPS = torch.ops.margreg_fast
NEG_INF, NAN, INF = float("-inf"), float("nan"), float("inf")


def test_extension_is_built():
    """The kernel is compiled on first use (margreg_fast._ops.native); where it cannot be, this must fail."""
    assert native.is_available(torch.device("cpu")), native.unavailable_reason(torch.device("cpu"))
    assert "native" in mf.available_backends("cpu")
    assert hasattr(OPS, "energy_head_forward") and hasattr(OPS, "energy_head_backward")


# The grid, sampled: every scale and difference on a mid-size shape, and the extreme shapes
# (C = 2, C = 50000, B = 4096) on every scale with the smallest and largest differences; C = 128 is
# the widest row the forward runs one per vector lane (its sums run over all 128 classes in turn).
GRID = [((64, 1000), s, d) for s in (1.0, 20.0, 1000.0) for d in (1e-7, 1e-5, 1e-3, 1e-1, 1.0, 10.0)]
GRID += [(shape, s, d) for shape in [(1, 2), (3, 50000), (4096, 10), (1024, 128)]
         for s in (1.0, 20.0, 1000.0) for d in (1e-7, 10.0)]
GRID += [((4096, 128), 20.0, 1e-3)]


@pytest.mark.parametrize("shape, scale, diff", GRID, ids=lambda v: str(v))
def test_forward_matches_truth_and_reference(shape, scale, diff):
    z0, z1 = make_logits(*shape, scale, diff, seed=len(GRID) + shape[1])
    target = torch.randint(0, shape[1], (shape[0],), generator=torch.Generator().manual_seed(2))
    target[0] = -100
    D, ce, stats = OPS.energy_head_forward(z0, z1, target, -100)
    D_ref, ce_ref, stats_ref = reference.forward(z0, z1, target, -100)
    assert D.dtype == ce.dtype == stats.dtype == torch.float32 and stats.shape == (shape[0], 4)
    assert scaled_error(D, z0, z1) <= 1e-5
    _, spread = true_difference(z0, z1)
    scale_d = (D_ref.double().abs() + spread).clamp_min(torch.finfo(torch.float32).tiny)
    assert ((D.double() - D_ref.double()).abs() / scale_d).max().item() <= 1e-5
    torch.testing.assert_close(ce, ce_ref)
    torch.testing.assert_close(stats, stats_ref)


def test_centred_form_overflow_falls_back_like_the_reference():
    """A centred difference u_k > U_MAX = 60 takes the max-shifted fallback (reference semantics)."""
    z0, z1 = make_logits(8, 300, 1.0, 1e-2, seed=5)
    z1[:, 7] += 100.0
    D, _, _ = OPS.energy_head_forward(z0, z1, None, -100)
    D_ref, _, _ = reference.forward(z0, z1, None, -100)
    assert scaled_error(D, z0, z1) <= 1e-5
    torch.testing.assert_close(D, D_ref)


def _backward_inputs(shape, dtype, seed=0):
    z0, z1 = make_logits(*shape, 5.0, 1e-2, seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    target = torch.randint(0, shape[1], (shape[0],), generator=gen)
    target[::3] = -100
    grad_d = torch.randn(shape[0], generator=gen)
    grad_ce = torch.randn(shape[0], generator=gen)
    return z0, z1, target, grad_d, grad_ce


@pytest.mark.parametrize("shape", [(5, 3), (64, 1000), (2, 50000)], ids=str)
@pytest.mark.parametrize("with_ce", [True, False])
def test_backward_matches_float64_softmax_and_reference(shape, with_ce):
    z0, z1, target, grad_d, grad_ce = _backward_inputs(shape, torch.float32)
    _, _, stats = OPS.energy_head_forward(z0, z1, target, -100)
    args = (target, -100, stats, grad_d, grad_ce if with_ce else None)
    dz0, dz1 = OPS.energy_head_backward(z0, z1, *args)
    assert dz0.dtype == dz1.dtype == torch.float32 and dz0.is_contiguous()

    p0, p1 = torch.softmax(z0.double(), 1), torch.softmax(z1.double(), 1)
    g_d = grad_d.double()[:, None]
    want_dz1 = g_d * p1
    want_dz0 = -g_d * p0
    if with_ce:
        valid = target != -100
        g_ce = (grad_ce.double() * valid)[:, None]
        onehot = torch.nn.functional.one_hot(target.clamp(min=0), shape[1]).double()
        want_dz0 = want_dz0 + g_ce * (p0 - onehot)
    assert relative_max_error(dz1, want_dz1) <= 1e-6
    assert relative_max_error(dz0, want_dz0) <= 1e-6
    ref0, ref1 = reference.backward(z0, z1, *args)
    assert relative_max_error(dz0, ref0) <= 1e-6 and relative_max_error(dz1, ref1) <= 1e-6


def test_float64_is_accumulated_in_float64():
    z0, z1 = make_logits(16, 50000, 20.0, 1e-7, dtype=torch.float64)
    D, ce, stats = OPS.energy_head_forward(z0, z1, None, -100)
    assert D.dtype == stats.dtype == torch.float64
    assert scaled_error(D, z0, z1) <= 1e-12
    assert torch.equal(ce, torch.zeros_like(ce))  # no target: zeros
    z0, z1, target, grad_d, grad_ce = _backward_inputs((9, 700), torch.float64)
    _, _, stats = OPS.energy_head_forward(z0, z1, target, -100)
    got = OPS.energy_head_backward(z0, z1, target, -100, stats, grad_d.double(), grad_ce.double())
    want = reference.backward(z0, z1, target, -100, stats, grad_d.double(), grad_ce.double())
    for g, w in zip(got, want):
        assert g.dtype == torch.float64
        assert relative_max_error(g, w) <= 1e-13


def test_class_masked_in_one_row_only_uses_the_fallback():
    z0, z1 = make_logits(4, 50, 2.0, 1e-2, seed=7)
    z0[0, 3] = NEG_INF  # masked in z0 only: D grows
    z1[1, 4] = NEG_INF  # masked in z1 only: D shrinks
    D, _, _ = OPS.energy_head_forward(z0, z1, None, -100)
    want = torch.logsumexp(z1.double(), 1) - torch.logsumexp(z0.double(), 1)
    torch.testing.assert_close(D.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(D, reference.forward(z0, z1, None, -100)[0])


def _rows_of_every_kind(batch, classes, dtype):
    """Logits whose rows hit every branch of the forward, spread over several lane groups."""
    z0, z1 = make_logits(batch, classes, 4.0, 1e-2, seed=classes, dtype=torch.float64)
    last = classes - 1
    z0[1, 0] = z1[1, 0] = NEG_INF  # a class masked in both rows: drops out
    z0[2, last] = NEG_INF  # masked in z0 only: max-shifted fallback
    z1[3, 0] = NEG_INF  # masked in z1 only
    z0[4] = z1[4] = NEG_INF  # all -inf: NaN
    z0[5] = NEG_INF  # z0 all -inf: +inf
    z1[6] = NEG_INF  # z1 all -inf: -inf
    z0[9, 0], z1[10, last], z0[11, 0] = NAN, INF, INF  # NaN / +inf: NaN
    z0[12], z1[12] = 0.0, 0.0  # class `last` dominant, class 0 jumps by 100: u > U_MAX, fallback
    z0[12, last] = z1[12, last] = 10.0
    z1[12, 0] = 100.0
    z1[13] = z0[13] + 3.0 * torch.linspace(-1, 1, classes, dtype=torch.float64)  # spread > 1: log s1 summed
    z1[17] = z0[17] + 5.0  # a constant shift: D = 5 (up to the rounding to dtype)
    return z0.to(dtype), z1.to(dtype)


# 37 rows: four full lane groups of 8 fp32 rows (nine of 4 fp64 rows) and a remainder taking the
# row path; C = 129 takes the row path throughout (the lane path covers C <= 128).
@pytest.mark.parametrize("classes", [2, 10, 128, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_rows_of_every_kind_match_the_reference(classes, dtype):
    """Short rows run W at a time, one per vector lane; rows needing a fallback redo the row path.
    Every kind of row, mixed into the lane groups, must give the reference's D, CE, stats and
    gradients (assert_close's defaults for the accumulation dtype; NaN where the reference has NaN)."""
    z0, z1 = _rows_of_every_kind(37, classes, dtype)
    target = torch.arange(37) % classes
    target[::5] = -100
    got = OPS.energy_head_forward(z0, z1, target, -100)
    want = reference.forward(z0, z1, target, -100)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, equal_nan=True)
    shift = torch.logsumexp(z1[17].double(), 0) - torch.logsumexp(z0[17].double(), 0)  # ~5 once rounded
    assert got[0][17].item() == pytest.approx(shift.item(), rel=1e-6)
    grad_d = torch.linspace(-1, 1, 37, dtype=got[0].dtype)  # gradients come in the outputs' dtype
    grad_ce = torch.linspace(1, 2, 37, dtype=got[0].dtype)
    got_b = OPS.energy_head_backward(z0, z1, target, -100, got[2], grad_d, grad_ce)
    want_b = reference.backward(z0, z1, target, -100, want[2], grad_d, grad_ce)
    for g, w in zip(got_b, want_b):
        torch.testing.assert_close(g, w, equal_nan=True)


def test_direct_op_call_rejects_bad_input():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="class index 3 outside"):
        OPS.energy_head_forward(z, z, torch.tensor([0, 3]), -100)
    with pytest.raises(RuntimeError, match="shapes differ"):
        OPS.energy_head_forward(z, torch.zeros(2, 4), None, -100)
    with pytest.raises(RuntimeError, match="int64"):
        OPS.energy_head_forward(z, z, torch.tensor([0, 1], dtype=torch.int32), -100)


def test_public_api_native_matches_torch_backend():
    z0, z1 = make_logits(48, 333, 4.0, 1e-2, seed=10)
    target = torch.randint(0, 333, (48,), generator=torch.Generator().manual_seed(3))
    results = {}
    for name in ("native", "torch"):
        a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
        out = mf.energy_penalty(a, b, 0.05, target, backend=name)
        (out.penalty.sum() + out.ce.sum()).backward()
        results[name] = (out.penalty.detach(), out.ce.detach(), a.grad, b.grad)
    for got, want in zip(results["native"], results["torch"]):
        assert relative_max_error(got, want) <= 1e-5
