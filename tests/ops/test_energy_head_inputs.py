"""Bad input raises a clear error; edge cases give the right answer, on every backend."""
import math

import pytest
import torch
import torch.nn.functional as F

import margreg_fast as mf
from margreg_fast._ops import reference
from tests.ops.calls import run_backward, run_forward
from tests.ops.truth import assert_stats_match_reference, make_logits, relative_max_error, scaled_error

NEG_INF, NAN, INF = float("-inf"), float("nan"), float("inf")


def _pair(shape=(4, 5), **kw):
    return make_logits(*shape, 2.0, 0.1, **kw)


@pytest.mark.parametrize(
    "z0, z1, match",
    [
        (torch.zeros(3, 4), torch.zeros(3, 5), "same shape"),
        (torch.zeros(12), torch.zeros(12), "2-D"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), "2-D"),
        (torch.zeros(3, 0), torch.zeros(3, 0), "at least one class"),
    ],
)
def test_bad_shapes_raise_value_error(z0, z1, match):
    with pytest.raises(ValueError, match=match):
        mf.energy_difference(z0, z1)


def test_bad_dtypes_raise_type_error():
    with pytest.raises(TypeError, match="same dtype"):
        mf.energy_difference(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating dtype"):
        mf.energy_difference(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mf.energy_difference([[0.0]], torch.zeros(1, 1))


def test_mixed_devices_raise_value_error():
    with pytest.raises(ValueError, match="same device"):
        mf.energy_difference(torch.zeros(2, 3), torch.zeros(2, 3, device="meta"))


@pytest.mark.parametrize("step", [0.0, -1e-3, math.inf, math.nan, torch.tensor([0.1, 0.0, 0.1, 0.1])])
def test_bad_steps_raise_value_error(step):
    z0, z1 = _pair()
    with pytest.raises(ValueError, match="step"):
        mf.energy_penalty(z0, z1, step)


def test_step_of_wrong_kind_or_shape():
    z0, z1 = _pair()
    with pytest.raises(TypeError, match="step"):
        mf.energy_penalty(z0, z1, "0.1")
    with pytest.raises(ValueError, match="shape"):
        mf.energy_penalty(z0, z1, torch.ones(3))


@pytest.mark.parametrize("bad", [5, -1, 100])
@pytest.mark.parametrize("batch", [4, 20])  # 20 rows: the native kernel's lane groups check them too
def test_targets_out_of_range_raise_value_error(backend, bad, batch):
    """Python checks the range for torch and triton; the native kernel raises the same ValueError."""
    name, device = backend
    z0, z1 = _pair((batch, 5))
    target = torch.arange(batch) % 5
    target[batch - 2] = bad
    with pytest.raises(ValueError, match=f"class index {bad} outside \\[0, 5\\)"):
        mf.energy_penalty(z0.to(device), z1.to(device), 0.1, target.to(device), backend=name)


def test_bad_target_kinds():
    z0, z1 = _pair()
    with pytest.raises(TypeError, match="integer"):
        mf.energy_penalty(z0, z1, 0.1, torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        mf.energy_penalty(z0, z1, 0.1, torch.zeros(3, dtype=torch.long))


def test_unknown_or_unavailable_backend():
    z0, z1 = _pair()
    with pytest.raises(ValueError, match="backend must be one of"):
        mf.energy_difference(z0, z1, backend="cuda")


def test_empty_batch(backend):
    name, device = backend
    z0 = torch.zeros(0, 7, device=device, requires_grad=True)
    z1 = torch.zeros(0, 7, device=device, requires_grad=True)
    out = mf.energy_penalty(z0, z1, 0.1, torch.zeros(0, dtype=torch.long, device=device), backend=name)
    assert out.penalty.shape == (0,) and out.ce.shape == (0,)
    (out.penalty.sum() + out.ce.sum()).backward()
    assert z0.grad.shape == (0, 7) and z1.grad.shape == (0, 7)
    z = torch.zeros(0, 7)
    D, ce, stats = run_forward(backend, z, z, torch.zeros(0, dtype=torch.long))
    assert D.shape == ce.shape == (0,) and stats.shape == (0, 4) and D.dtype == torch.float32
    dz0, dz1 = run_backward(backend, z, z, None, -100, stats, D, None)
    assert dz0.shape == dz1.shape == (0, 7) and dz0.dtype == torch.float32


def test_non_contiguous_and_transposed_inputs_match_contiguous(backend):
    """Strided logits, targets and per-row gradients give the contiguous results: bit for bit from the
    kernels; from the eager reference, whose reductions follow the layout, to fp32 rounding."""
    same = torch.equal if backend[0] != "torch" else lambda g, w: torch.testing.assert_close(g, w) is None
    base0, base1 = make_logits(600, 40, 3.0, 1e-2, seed=4)
    cases = [
        (base0.t().contiguous().t(), base1.t().contiguous().t()),  # column-major (transposed storage)
        (base0[::2, ::3], base1[::2, ::3]),  # strided rows and columns
        (base0[:, 5:35], base1[:, 5:35]),  # row stride != C
    ]
    target_full = torch.randint(0, 30, (600,), generator=torch.Generator().manual_seed(0))
    for a, b in cases:
        assert not a.is_contiguous() and not b.is_contiguous()
        target = target_full[: a.shape[0]] % a.shape[1]
        target_strided = torch.stack([target, target], 1)[:, 0]
        got = run_forward(backend, a, b, target_strided)
        want = run_forward(backend, a.contiguous(), b.contiguous(), target)
        for g, w in zip(got, want):
            assert same(g, w)
        assert scaled_error(got[0], a, b) <= 1e-5
        grad_d = torch.linspace(-1, 1, 2 * a.shape[0])[::2]
        gb = run_backward(backend, a, b, target_strided, -100, got[2], grad_d, grad_d)
        wb = run_backward(backend, a.contiguous(), b.contiguous(), target, -100, want[2], grad_d.contiguous(),
                          grad_d.contiguous())
        for g, w in zip(gb, wb):
            assert same(g, w)


def test_masked_classes_drop_out(backend):
    """Classes masked (-inf) in both rows drop out: the D, CE and gradients of the other columns."""
    z0, z1 = make_logits(32, 300, 5.0, 1e-3, seed=6)
    keep = torch.ones(300, dtype=torch.bool)
    keep[::7] = False
    a, b = z0.clone(), z1.clone()
    a[:, ~keep] = NEG_INF
    b[:, ~keep] = NEG_INF
    target = torch.arange(32) * 9 % 300
    target[~keep[target]] = -100
    D, ce, stats = run_forward(backend, a, b, target)
    assert torch.isfinite(D).all() and torch.isfinite(ce).all()
    assert scaled_error(D, z0[:, keep], z1[:, keep]) <= 1e-5
    torch.testing.assert_close(ce, reference.forward(a, b, target, -100)[1])
    dz0, dz1 = run_backward(backend, a, b, target, -100, stats, torch.ones(32), torch.ones(32))
    assert torch.isfinite(dz0).all() and torch.isfinite(dz1).all()
    assert (dz0[:, ~keep] == 0).all() and (dz1[:, ~keep] == 0).all()
    assert relative_max_error(dz1[:, keep], torch.softmax(z1[:, keep].double(), 1)) <= 1e-6


def test_fully_masked_rows_follow_the_difference_of_logsumexps(backend):
    """Both rows all -inf: NaN; one row all -inf: +-inf, exactly as logsumexp(z1) - logsumexp(z0)."""
    z0, z1 = make_logits(4, 9, 1.0, 1e-2, seed=8)
    z0[0], z1[0] = NEG_INF, NEG_INF
    z0[1] = NEG_INF
    z1[2] = NEG_INF
    D, _, stats = run_forward(backend, z0, z1)
    torch.testing.assert_close(D, torch.logsumexp(z1, 1) - torch.logsumexp(z0, 1), equal_nan=True)
    assert torch.isnan(D[0]) and D[1] == INF and D[2] == NEG_INF and torch.isfinite(D[3])
    assert_stats_match_reference(stats, reference.forward(z0, z1, None, -100)[2])


@pytest.mark.parametrize("bad", [NAN, INF])
@pytest.mark.parametrize("where", ["z0", "z1"])
def test_nan_and_inf_propagate_as_nan(backend, bad, where):
    z0, z1 = make_logits(3, 1000, 1.0, 1e-2, seed=9)
    (z0 if where == "z0" else z1)[1, 500] = bad
    target = torch.tensor([1, 2, 3])
    D, ce, stats = run_forward(backend, z0, z1, target)
    assert torch.isnan(D[1]) and torch.isnan(ce[1])
    assert torch.isfinite(D[[0, 2]]).all() and torch.isfinite(ce[[0, 2]]).all()
    D_ref, _, stats_ref = reference.forward(z0, z1, target, -100)
    torch.testing.assert_close(D, D_ref, equal_nan=True)
    assert_stats_match_reference(stats, stats_ref)
    grads = run_backward(backend, z0, z1, target, -100, stats, torch.ones(3), torch.ones(3))
    for got, want in zip(grads, reference.backward(z0, z1, target, -100, stats_ref, torch.ones(3), torch.ones(3))):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, equal_nan=True)
    assert torch.isfinite(grads[0][[0, 2]]).all()

    name, device = backend  # through the public op: the loss is NaN, so a GradScaler skips the step
    a, b = z0.to(device).requires_grad_(), z1.to(device).requires_grad_()
    out = mf.energy_penalty(a, b, 0.1, target.to(device), backend=name)
    loss = out.penalty.sum() + out.ce.sum()
    assert torch.isnan(loss)
    loss.backward()


@pytest.mark.parametrize("ignore_index", [-100, 7])
def test_ignore_index_rows_give_zero_ce_and_no_ce_gradient(backend, ignore_index):
    name, device = backend
    z0, z1 = make_logits(4, 12, 1.0, 0.1)
    target = torch.tensor([1, ignore_index, 3, 11])
    a = z0.to(device).requires_grad_()
    out = mf.energy_penalty(a, z1.to(device), 0.1, target.to(device), ignore_index=ignore_index, backend=name)
    want = F.cross_entropy(z0.double(), target, reduction="none", ignore_index=ignore_index)
    torch.testing.assert_close(out.ce.cpu().double(), want, rtol=1e-6, atol=0)
    out.ce.sum().backward()
    grad = a.grad.cpu()
    assert (grad[1] == 0).all() and (grad[[0, 2, 3]] != 0).all()
    onehot = F.one_hot(target.clamp(0, 11), 12).double()
    torch.testing.assert_close(grad[[0, 2, 3]].double(), (torch.softmax(z0.double(), 1) - onehot)[[0, 2, 3]],
                               rtol=0, atol=1e-6)


def test_step_tensor_of_another_float_dtype_gets_its_gradient(backend):
    """An fp64 per-sample step on fp32 logits: dz in the logits' dtype, dh = -2 D^2 / h^3 in the step's."""
    name, device = backend
    z0, z1 = make_logits(5, 7, 1.0, 0.01)
    a = z0.to(device).requires_grad_()
    h = torch.full((5,), 0.1, dtype=torch.float64, device=device, requires_grad=True)
    out = mf.energy_penalty(a, z1.to(device), h, backend=name)
    out.penalty.sum().backward()
    assert a.grad.dtype == torch.float32 and h.grad.dtype == torch.float64
    D = out.difference.detach().double()
    torch.testing.assert_close(h.grad, -2 * D**2 / 0.1**3, rtol=1e-6, atol=0)
