"""The step rule "auto" and what it buys under bf16 autocast."""
import pytest
import torch

from margreg_fast import marginal_density_penalty
from margreg_fast.estimators.steps import resolve_step
from margreg_fast.kit import models


@pytest.mark.parametrize("dtype, order, factor", [(torch.float32, 1, 1.0), (torch.float32, 2, 4.0),
                                                  (torch.bfloat16, 2, 4.0), (torch.float64, 2, 4.0)])
def test_auto_is_c_eps_to_the_one_over_p_plus_one_times_rms(dtype, order, factor):
    x = torch.rand(3, 1, 5, 5)
    x[2] = 0  # an all-zero sample takes RMS 1
    rms = torch.tensor([x[0].pow(2).mean().sqrt(), x[1].pow(2).mean().sqrt(), 1.0])
    want = factor * torch.finfo(dtype).eps ** (1 / (order + 1)) * rms
    torch.testing.assert_close(resolve_step("auto", x, dtype, order), want)


@pytest.mark.parametrize("make", [lambda: models.SmallViT(dim=32, image_size=16, depth=2, heads=4),
                                  lambda: models.SmallCNN(width=8, image_size=16)], ids=["vit-sdpa", "cnn"])
def test_bf16_autocast_with_the_default_estimator_stays_within_10_percent_of_fp32(make):
    """The default (rfd, step="auto") under bf16 autocast is within 10% of fp32, on the SDPA ViT too
    (fd at its auto step was -30%..+580% off on a ViT). rfd's value is ||g||^2 itself: measured within
    0.3% on both models. central at its auto step is not held to this: -0.3% on the ViT, -11% on this
    ReLU CNN (a difference of bf16 logits, whatever h)."""
    method = "rfd"
    torch.manual_seed(0)
    model, x = make(), torch.rand(32, 1, 16, 16)
    fp32 = marginal_density_penalty(model, x, method=method, step="auto").item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = marginal_density_penalty(model, x, method=method, step="auto").item()
    assert abs(bf16 / fp32 - 1) <= 0.10, (bf16, fp32)
