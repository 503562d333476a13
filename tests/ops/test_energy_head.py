"""Accuracy of the fused energy head against float64 truth, on every backend.

Tolerances: D within 1e-5 of the scale |D| + sum_k p0_k |d_k| in fp32 (issue 2; ~170 fp32 ulps, while
the naive difference of two fp32 logsumexps misses it by orders of magnitude, see
test_naive_difference_misses_the_bound); gradients within 1e-6 of max |grad| (the fp32 softmax
itself carries ~|z - m| ulps of relative error on the dominant entries, ~1e-7 here).
"""
import pytest
import torch
import torch.nn.functional as F

import margreg_fast as mf
from margreg_fast._ops import reference
from tests.ops.calls import run_backward, run_forward
from tests.ops.truth import (assert_stats_match_reference, make_logits, relative_max_error, scaled_error,
                             true_difference)

SCALES = [1.0, 20.0, 1000.0]
DIFFS = [1e-7, 1e-4, 1e-1, 10.0]
SHAPES = [(1, 2), (33, 1000), (3, 50000), (4096, 10)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}xC{s[1]}")
@pytest.mark.parametrize("scale", SCALES)
def test_difference_is_accurate_in_fp32(backend, shape, scale):
    name, device = backend
    for i, diff in enumerate(DIFFS):
        z0, z1 = make_logits(*shape, scale, diff, seed=i)
        D = mf.energy_difference(z0.to(device), z1.to(device), backend=name).difference.cpu()
        assert D.dtype == torch.float32
        assert scaled_error(D, z0, z1) <= 1e-5, (diff, scaled_error(D, z0, z1))


def test_naive_difference_misses_the_bound():
    """logsumexp(z1) - logsumexp(z0) in fp32 is off by >= 100x the bound on small differences."""
    z0, z1 = make_logits(64, 1000, 20.0, 1e-6)
    naive = torch.logsumexp(z1, 1) - torch.logsumexp(z0, 1)
    assert scaled_error(naive, z0, z1) > 100 * 1e-5
    assert scaled_error(mf.energy_difference(z0, z1, backend="torch").difference, z0, z1) <= 1e-5


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", [(7, 3), (16, 1000), (2, 50000)], ids=lambda s: f"B{s[0]}xC{s[1]}")
def test_gradients_match_softmax(backend, shape, scale):
    name, device = backend
    z0, z1 = make_logits(*shape, scale, 1e-2, seed=3)
    target = torch.randint(0, shape[1], (shape[0],), generator=torch.Generator().manual_seed(1))
    target[0] = -100
    a = z0.to(device).requires_grad_()
    b = z1.to(device).requires_grad_()
    out = mf.energy_penalty(a, b, 0.5, target.to(device), backend=name)
    g_pen = torch.linspace(0.5, 2.0, shape[0], dtype=torch.float64)
    g_ce = torch.linspace(-1.0, 1.0, shape[0], dtype=torch.float64)
    ((out.penalty.cpu() * g_pen.float()).sum() + (out.ce.cpu() * g_ce.float()).sum()).backward()

    a64, b64 = z0.double(), z1.double()
    D, _ = true_difference(z0, z1)
    coeff = g_pen * 2 * D / 0.5**2  # d(penalty)/dD
    p0, p1 = torch.softmax(a64, 1), torch.softmax(b64, 1)
    valid = target != -100
    onehot = F.one_hot(target.clamp(min=0), shape[1]).double() * valid[:, None]
    want_dz1 = coeff[:, None] * p1
    want_dz0 = -coeff[:, None] * p0 + (g_ce * valid)[:, None] * (p0 - onehot)
    assert relative_max_error(b.grad.cpu(), want_dz1) <= 1e-6
    assert relative_max_error(a.grad.cpu(), want_dz0) <= 1e-6
    ce64 = F.cross_entropy(a64, target, reduction="none", ignore_index=-100)
    assert relative_max_error(out.ce.detach().cpu(), ce64) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_fp32(backend, dtype):
    """fp32 outputs from half logits; gradients in the half dtype, at most one half-precision ulp from
    the reference's (fp32 values rounded to nearest)."""
    z0, z1 = make_logits(33, 517, 5.0, 1e-2, dtype=dtype)
    target = torch.randint(0, 517, (33,), generator=torch.Generator().manual_seed(4))
    target[::3] = -100
    D, ce, stats = run_forward(backend, z0, z1, target)
    assert D.dtype == ce.dtype == stats.dtype == torch.float32
    # the inputs are exactly representable in fp32, so the fp32 bound applies to the result
    assert scaled_error(D, z0.float(), z1.float()) <= 1e-5
    _, ce_ref, stats_ref = reference.forward(z0, z1, target, -100)
    torch.testing.assert_close(ce, ce_ref)
    assert_stats_match_reference(stats, stats_ref)
    grad_d, grad_ce = torch.linspace(-1.0, 1.0, 33), torch.linspace(0.5, 1.5, 33)
    dz0, dz1 = run_backward(backend, z0, z1, target, -100, stats, grad_d, grad_ce)
    assert dz0.dtype == dz1.dtype == dtype
    ulp = torch.finfo(dtype).eps
    for got, want in zip((dz0, dz1), reference.backward(z0, z1, target, -100, stats, grad_d, grad_ce)):
        torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=1e-7)

    name, device = backend  # through the public op, with autograd
    a, b = z0.to(device).requires_grad_(), z1.to(device).requires_grad_()
    out = mf.energy_penalty(a, b, 0.1, backend=name)
    assert out.penalty.dtype == torch.float32 and out.difference.dtype == torch.float32
    out.penalty.sum().backward()
    assert a.grad.dtype == dtype and b.grad.dtype == dtype


def test_float64_gradcheck_torch_backend():
    z0, z1 = make_logits(4, 6, 3.0, 0.3, dtype=torch.float64)
    a, b = z0.requires_grad_(), z1.requires_grad_()
    target = torch.tensor([1, -100, 5, 0])
    step = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, h: tuple(mf.energy_penalty(a, b, h, target, backend="torch")[:2]), (a, b, step)
    )


@pytest.mark.parametrize("grad_output_requires_grad", [False, True])
def test_double_backward_raises_instead_of_silently_dropping_terms(backend, grad_output_requires_grad):
    """The gradient of the op must not be a constant: ((ga**2).sum() + z0.sum()).backward() would then
    silently give ones. It carries a node that raises our message (only ours matches)."""
    name, device = backend
    z0, z1 = make_logits(3, 4, 1.0, 0.1)
    a, b = z0.to(device).requires_grad_(), z1.to(device).requires_grad_()
    grad_output = torch.ones(3, device=device, requires_grad=grad_output_requires_grad)
    (ga,) = torch.autograd.grad(mf.energy_difference(a, b, backend=name).difference, a, grad_output,
                                create_graph=True)
    assert ga.grad_fn is not None
    with pytest.raises(RuntimeError, match="energy head op .* is not twice differentiable"):
        ((ga ** 2).sum() + a.sum()).backward()
