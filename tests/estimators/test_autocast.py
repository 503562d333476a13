"""Under autocast the penalty's passes run in fp32 as probes of the autocast forward (estimators/core.py).

* the penalty (value and parameter gradient) is fp32's: on a model without BatchNorm or random
  layers the fp32 probes compute what an fp32 estimate computes, so they agree to fp32 rounding
  (the SDPA path under autocast: tests/zoo/test_model_zoo.py);
* the forward at x stays in the autocast dtype and serves the CE (its logits are bf16), and a
  train-mode BatchNorm updates its running statistics once per step, as in plain training;
* fp16 with ``torch.amp.GradScaler``: the scaled loss gives the scaled gradient, and a step whose
  gradient overflows is skipped (parameters unchanged, scale backed off) exactly as in plain training.

The direction of the parameter gradient on real timm nets is checked in tests/zoo/test_model_zoo.py.
"""
import pytest
import torch
import torch.nn.functional as F

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast.kit import models


def _cnn():
    torch.manual_seed(0)
    return models.SmallCNN(width=8, image_size=20, activation="gelu"), torch.rand(8, 1, 20, 20)


def _gradient(model, value):
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, list(model.parameters()))])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["rfd", "central", "exact"])
def test_the_penalty_under_autocast_is_the_fp32_penalty(dtype, method):
    """fp32 rounding through a small GELU CNN: 1e-4 relative (a bf16 pass differs by ~1e-2)."""
    model, x = _cnn()
    torch.manual_seed(1)
    fp32 = marginal_density_penalty(model, x, estimator=method, reduction="none")
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=dtype):
        mixed = marginal_density_penalty(model, x, estimator=method, reduction="none")
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, fp32, rtol=1e-4, atol=0)
    g32, gmixed = _gradient(model, fp32.mean()), _gradient(model, mixed.mean())
    assert F.cosine_similarity(g32, gmixed, dim=0) >= 1 - 1e-6
    torch.testing.assert_close(gmixed, g32, rtol=1e-3, atol=1e-3 * g32.abs().max().item())


def test_the_ce_forward_stays_in_bf16_and_batchnorm_updates_once():
    torch.manual_seed(0)
    model = models.ResidualCNN(in_channels=1, width=8, blocks=2, activation="silu")
    x, y = torch.rand(8, 1, 20, 20), torch.randint(0, 10, (8,))
    reg = MarginalDensityRegularizer(1.0)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, penalty = reg.logits_and_penalty(model, x)
        counts = bn.num_batches_tracked.item()
        loss, stats = reg(model, x, y)
    assert logits.dtype == torch.bfloat16 and penalty.dtype == torch.float32
    assert bn.num_batches_tracked.item() == counts + 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(model(x), y)
    assert abs(stats["ce"] - plain.item()) <= 1e-6 * abs(plain.item()), (stats["ce"], plain.item())


def _fp16_step(model, x, y, reg, scaler, opt):
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(x), y) if reg is None else reg(model, x, y)[0]
    scaler.scale(loss).backward()
    return loss


@pytest.mark.parametrize("penalised", [False, True], ids=["plain", "regulariser"])
def test_fp16_grad_scaler_scales_checks_and_skips_as_in_plain_training(penalised):
    """A first scale of 2^40 overflows the fp16 backward: the step is skipped and the scale halves;
    at a scale of 2^8 the unscaled gradient is the scaled one / 2^8 and the step is taken."""
    torch.manual_seed(0)
    model = models.ResidualCNN(in_channels=1, width=8, blocks=2, activation="silu")
    x, y = torch.rand(8, 1, 20, 20), torch.randint(0, 10, (8,))
    reg = MarginalDensityRegularizer(1.0, generator=torch.Generator().manual_seed(0)) if penalised else None
    opt = torch.optim.SGD(model.parameters(), 0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    before = [p.detach().clone() for p in model.parameters()]
    _fp16_step(model, x, y, reg, scaler, opt)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 39
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters())), "an overflowing step must be skipped"

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    torch.manual_seed(3)
    _fp16_step(model, x, y, None if reg is None else MarginalDensityRegularizer(
        1.0, generator=torch.Generator().manual_seed(1)), scaler, opt)
    scaled = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(x), y) if reg is None else MarginalDensityRegularizer(
            1.0, generator=torch.Generator().manual_seed(1))(model, x, y)[0]
    loss.backward()
    for s, p in zip(scaled, model.parameters()):
        torch.testing.assert_close(s / 2.0 ** 8, p.grad, rtol=1e-2, atol=1e-2 * p.grad.abs().max().item() + 1e-12)
    for p, s in zip(model.parameters(), scaled):
        p.grad = s
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 8
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "a finite step must be taken"


@pytest.mark.parametrize("method", ["rfd", "exact"])
def test_a_subset_of_a_batchnorm_batch_holds_fp32_statistics_under_autocast(method):
    """fraction < 1 on a train-mode BatchNorm net: the subset's passes hold the whole batch's statistics,
    and under bf16 autocast those are an fp32 capture's, as at fraction 1, so the penalty (value and
    parameter gradient) is fp32's to fp32 rounding (1e-4 relative, as above). Statistics taken from
    the bf16 forward put its rounding (2^-8) into every held layer: 4.6e-3 relative on this net."""
    torch.manual_seed(0)
    model = models.ResidualCNN(in_channels=1, width=8, blocks=2, activation="silu")
    x = torch.rand(8, 1, 20, 20)

    def penalty(autocast):
        reg = MarginalDensityRegularizer(1.0, estimator=method, fraction=0.5, generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits, value = reg.logits_and_penalty(model, x)
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
        return value

    fp32, mixed = penalty(False), penalty(True)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, fp32, rtol=1e-4, atol=0)
    g32, gmixed = _gradient(model, fp32), _gradient(model, mixed)
    assert F.cosine_similarity(g32, gmixed, dim=0) >= 1 - 1e-6
    torch.testing.assert_close(gmixed, g32, rtol=1e-3, atol=1e-3 * g32.abs().max().item())
