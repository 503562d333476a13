"""The step rule "auto": its documented values and what it buys under bf16 autocast.

The values are checked against the numbers stated in :mod:`margreg_fast.estimators.steps` (h / RMS
per logits dtype and estimator, given there to two significant digits: 2% relative), not against a
retyped formula; the per-sample and scale properties are checked on their own.
"""
import pytest
import torch
import torch.nn.functional as F

from margreg_fast import marginal_density_penalty
from margreg_fast.estimators.core import STEP_ORDER
from margreg_fast.estimators.steps import resolve_step
from margreg_fast.kit import models

#: h / RMS(x) as the steps module documents it, per logits dtype and estimator.
DOCUMENTED = {(torch.float32, "fd"): 3.5e-4, (torch.float32, "rfd"): 2.0e-2, (torch.float32, "central"): 2.0e-2,
              (torch.bfloat16, "fd"): 0.088, (torch.bfloat16, "rfd"): 0.79,
              (torch.float64, "fd"): 1.5e-8, (torch.float64, "rfd"): 2.4e-5}


@pytest.mark.parametrize("dtype, method", DOCUMENTED, ids=lambda v: str(v).replace("torch.", ""))
def test_auto_step_takes_the_documented_multiple_of_each_samples_rms(dtype, method):
    x = torch.rand(3, 1, 5, 5)
    x[1] *= 7  # the scale of each sample is its own
    x[2] = 0  # an all-zero sample takes RMS 1
    rms = torch.stack([x[0].pow(2).mean().sqrt(), x[1].pow(2).mean().sqrt(), torch.tensor(1.0)])
    h = resolve_step("auto", x, dtype, STEP_ORDER[method])
    assert h.shape == (3,) and not h.requires_grad
    torch.testing.assert_close(h / rms, torch.full((3,), DOCUMENTED[dtype, method]), rtol=0.02, atol=0)
    torch.testing.assert_close(resolve_step("auto", 10 * x, dtype, STEP_ORDER[method])[:2], 10 * h[:2])


def _parameter_gradient(model, x, step):
    torch.manual_seed(1)  # rfd's signs: the same draw in every call
    penalty = marginal_density_penalty(model, x, step=step)
    return torch.cat([g.flatten() for g in torch.autograd.grad(penalty, list(model.parameters()))])


def test_bf16_autocast_keeps_the_default_estimators_parameter_gradient_at_the_auto_step():
    """What "auto" buys: under bf16 autocast the default estimator's parameter gradient on the SDPA
    ViT keeps a cosine >= 0.99 with the fp32 one at the auto step (h ~ 0.79 RMS), and falls below
    that at h = 1e-2, where bf16 rounding of the logits swamps the secant. (rfd's value is ||g||^2,
    whatever h: only its gradient depends on the step.)"""
    torch.manual_seed(0)
    model, x = models.SmallViT(dim=32, image_size=16, depth=2, heads=4), torch.rand(32, 1, 16, 16)
    cosine = {}
    for step in ("auto", 1e-2):
        fp32 = _parameter_gradient(model, x, step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = _parameter_gradient(model, x, step)
        cosine[step] = F.cosine_similarity(fp32, bf16.float(), dim=0).item()
    assert cosine["auto"] >= 0.99 > cosine[1e-2], cosine
