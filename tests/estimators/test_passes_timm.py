"""The passes on real timm models in train mode (small inputs): BatchNormAct2d with in-place
activations (efficientnet_b0, mobilenetv3_small_100) and drop-path (a ViT). The full zoo is
tests/test_model_zoo.py's; these are the cases that the forward-swapping mechanism got wrong.

Checks in float64, where the references' 1e-10 relative tolerance is rounding only; the default
step's loss and secant ratio in float32 as a user trains.
"""
import math

import pytest
import torch

from margreg_fast import MarginalDensityRegularizer
from tests.estimators.references import batch_statistics_copy, cosine, flat_grad, per_sample, ratio
from tests.timm_import import import_timm

timm = import_timm()


def _image_batch(dtype):
    return torch.rand(3, 3, 64, 64, dtype=dtype, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, method", [("efficientnet_b0", "exact"),
                                          # hardsigmoid (squeeze-excite) has no double backward: jvp is exact too
                                          ("mobilenetv3_small_100", "jvp")])
def test_penalty_is_that_of_the_eval_copy_with_the_batch_statistics(name, method):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).double().train()
    x = _image_batch(torch.float64)
    reference = per_sample(batch_statistics_copy(model, x), x, method)
    torch.testing.assert_close(per_sample(model, x, method), reference, rtol=1e-10, atol=0)
    assert abs(ratio(model, x, "rfd") - 1) < 1e-2


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small_100"])
def test_default_step_is_finite_with_a_secant_ratio_near_one(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).train()
    loss, stats = MarginalDensityRegularizer(1.0)(model, _image_batch(torch.float32), torch.tensor([1, 2, 3]))
    loss.backward()
    assert math.isfinite(loss.item()) and 0.8 <= stats["secant_ratio"] <= 1.25, stats
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_drop_path_masks_are_the_clean_pass_masks():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, drop_path_rate=0.1,
                            num_classes=10).double().train()
    for block in vit.blocks:
        block.attn.fused_attn = False  # SDPA has no double backward on CPU; exact needs the plain attention
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact, rfd = per_sample(vit, x, "exact"), per_sample(vit, x, "rfd")
    assert not torch.allclose(per_sample(vit, x, "exact", seed=4), exact, rtol=1e-3)  # the masks matter
    torch.testing.assert_close(rfd, exact, rtol=1e-10, atol=0)  # rfd's value is exact's
    assert cosine(flat_grad(vit, exact.mean()), flat_grad(vit, rfd.mean())) >= 0.99
    assert 0.8 <= ratio(vit, x, "rfd") <= 1.25
