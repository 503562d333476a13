"""Bad input raises a clear error; edge cases give the right answer, on every backend."""
import math

import pytest
import torch
import torch.nn.functional as F

import margreg_fast as mf
from tests.ops.truth import make_logits, scaled_error

NEG_INF = float("-inf")


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


def test_non_contiguous_and_transposed_inputs(backend):
    name, device = backend
    base0, base1 = make_logits(9, 14, 3.0, 0.05)
    z0, z1 = base0.t().contiguous().t()[:, ::2], base1[:, ::2]  # column-major view, strided view
    assert not z0.is_contiguous() and not z1.is_contiguous()
    D = mf.energy_difference(z0.to(device), z1.to(device), backend=name).cpu()
    assert scaled_error(D, z0.contiguous(), z1.contiguous()) <= 1e-5


def test_masked_classes_give_finite_results(backend):
    name, device = backend
    z0, z1 = make_logits(3, 6, 2.0, 0.1)
    z0[:, 4:] = NEG_INF  # the same classes masked in both rows
    z1[:, 4:] = NEG_INF
    z1[2, 0] = NEG_INF  # a class masked in z1 only
    a, b = z0.to(device).requires_grad_(), z1.to(device).requires_grad_()
    out = mf.energy_penalty(a, b, 0.1, torch.tensor([0, 1, 2], device=device), backend=name)
    want = torch.logsumexp(z1.double(), 1) - torch.logsumexp(z0.double(), 1)
    torch.testing.assert_close(out.difference.cpu().double(), want, rtol=1e-5, atol=1e-6)
    (out.penalty.sum() + out.ce.sum()).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert (a.grad[:, 4:] == 0).all() and (b.grad[:, 4:] == 0).all()


def test_fully_masked_rows_give_nan_like_logsumexp(backend):
    name, device = backend
    z0, z1 = make_logits(3, 5, 1.0, 0.1)
    z0[1], z1[1] = NEG_INF, NEG_INF
    D = mf.energy_difference(z0.to(device), z1.to(device), backend=name).cpu()
    naive = torch.logsumexp(z1, 1) - torch.logsumexp(z0, 1)
    assert torch.isnan(naive[1]) and torch.isnan(D[1])
    assert torch.isfinite(D[[0, 2]]).all()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["z0", "z1"])
def test_nan_and_inf_propagate_as_nan(backend, bad_value, where):
    name, device = backend
    z0, z1 = make_logits(3, 5, 1.0, 0.1)
    (z0 if where == "z0" else z1)[1, 2] = bad_value
    a, b = z0.to(device).requires_grad_(), z1.to(device).requires_grad_()
    out = mf.energy_penalty(a, b, 0.1, torch.tensor([0, 1, 2], device=device), backend=name)
    assert torch.isnan(out.penalty[1]) and torch.isfinite(out.penalty[[0, 2]]).all()
    if where == "z0":
        assert torch.isnan(out.ce[1])
    loss = out.penalty.sum() + out.ce.sum()
    assert torch.isnan(loss)  # a GradScaler sees a non-finite loss and skips the step
    loss.backward()


@pytest.mark.parametrize("ignore_index", [-100, 7])
def test_ignore_index_rows_give_zero_ce_and_no_ce_gradient(backend, ignore_index):
    name, device = backend
    z0, z1 = make_logits(4, 6, 1.0, 0.1)
    target = torch.tensor([1, ignore_index, 3, 5])
    a = z0.to(device).requires_grad_()
    out = mf.energy_penalty(a, z1.to(device), 0.1, target.to(device), ignore_index=ignore_index, backend=name)
    want = F.cross_entropy(z0.double(), target, reduction="none", ignore_index=ignore_index)
    torch.testing.assert_close(out.ce.cpu().double(), want, rtol=1e-6, atol=0)
    out.ce.sum().backward()
    assert (a.grad[1] == 0).all() and (a.grad[[0, 2, 3]] != 0).any()


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
