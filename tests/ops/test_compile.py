"""torch.compile traces the native op with no graph break; torch.library.opcheck validates its registration.

fullgraph=True makes any graph break an error, so a passing compile proves the op (through its
registered fake implementation) is traced whole, forward and backward. Compiled and eager runs use the
same kernel, so they agree to fp32 rounding of the surrounding arithmetic (assert_close's fp32 defaults).
"""
import pytest
import torch

import margreg_fast as mf
from tests.ops.truth import make_logits

OPS = torch.ops.margreg_fast


def _loss(z0, z1, target):
    out = mf.energy_penalty(z0, z1, 0.1, target, backend="native")
    return out.penalty.mean() + out.ce.mean() + mf.energy_difference(z0, z1, backend="native").difference.sum()


def _run(fn, z0, z1, target):
    a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    loss = fn(a, b, target)
    loss.backward()
    return loss.detach(), a.grad, b.grad


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_forward_and_backward_match_eager(compiler):
    torch._dynamo.reset()
    z0, z1 = make_logits(16, 37, 3.0, 1e-2, seed=0)
    target = torch.randint(0, 37, (16,), generator=torch.Generator().manual_seed(0))
    target[3] = -100
    compiled = torch.compile(_loss, backend=compiler, fullgraph=True)
    for got, want in zip(_run(compiled, z0, z1, target), _run(_loss, z0, z1, target)):
        torch.testing.assert_close(got, want)


def _opcheck_inputs(dtype):
    z0, z1 = make_logits(6, 11, 2.0, 1e-2, seed=1, dtype=dtype)
    target = torch.tensor([0, 3, -100, 10, 5, 1])
    return z0, z1, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("with_target", [True, False])
def test_opcheck(dtype, with_target):
    z0, z1, target = _opcheck_inputs(dtype)
    target = target if with_target else None
    torch.library.opcheck(OPS.energy_head_forward.default, (z0, z1, target, -100))
    _, _, stats = OPS.energy_head_forward(z0, z1, target, -100)
    grad_d = torch.linspace(-1, 1, 6, dtype=stats.dtype)
    grad_ce = grad_d.flip(0) if with_target else None
    torch.library.opcheck(OPS.energy_head_backward.default, (z0, z1, target, -100, stats, grad_d, grad_ce))
