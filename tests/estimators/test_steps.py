"""The step rule "auto": its documented values and its bound on how far the probe moves S.

The values are checked against the numbers stated in :mod:`margreg_fast._estimators.steps` (h / RMS
per logits dtype and estimator, given there to two significant digits: 2% relative), not against a
retyped formula; the per-sample and scale properties are checked on their own.
"""
import pytest
import torch

from margreg_fast._estimators.registry import ESTIMATORS
from margreg_fast._estimators.steps import CURVATURE_BOUND, resolve_step

#: h / RMS(x) as the steps module documents it, per logits dtype and estimator.
DOCUMENTED = {(torch.float32, "fd"): 3.5e-4, (torch.float32, "rfd"): 3.5e-4, (torch.float32, "central"): 2.0e-2,
              (torch.bfloat16, "rfd"): 0.088, (torch.bfloat16, "central"): 0.79,
              (torch.float64, "rfd"): 1.5e-8, (torch.float64, "central"): 2.4e-5}


@pytest.mark.parametrize("dtype, method", DOCUMENTED, ids=lambda v: str(v).replace("torch.", ""))
def test_auto_step_takes_the_documented_multiple_of_each_samples_rms(dtype, method):
    """Where ||g|| is small (or 0) the rounding bound decides: h / RMS(x) as documented."""
    x = torch.rand(3, 1, 5, 5)
    x[1] *= 7  # the scale of each sample is its own
    x[2] = 0  # an all-zero sample takes RMS 1
    rms = torch.stack([x[0].pow(2).mean().sqrt(), x[1].pow(2).mean().sqrt(), torch.tensor(1.0)])
    small = torch.tensor([1e-6, 1e-6, 0.0])
    h = resolve_step("auto", x, dtype, small, ESTIMATORS[method])
    assert h.shape == (3,) and not h.requires_grad
    torch.testing.assert_close(h / rms, torch.full((3,), DOCUMENTED[dtype, method]), rtol=0.02, atol=0)
    torch.testing.assert_close(resolve_step("auto", 10 * x, dtype, small, ESTIMATORS[method])[:2], 10 * h[:2])


@pytest.mark.parametrize("method", ["fd", "central", "rfd"])
def test_auto_step_bounds_how_far_the_probe_moves_s(method):
    """A sample with a large input gradient takes h = C / ||g||: the probe moves S by at most C nats
    along v, whatever the input's scale; the others keep the rounding bound."""
    x = torch.rand(3, 1, 5, 5) + 0.5
    norm = torch.tensor([1e4, 1e-3, 3e2])
    h = resolve_step("auto", x, torch.float32, norm, ESTIMATORS[method])
    rounding = resolve_step("auto", x, torch.float32, torch.zeros(3), ESTIMATORS[method])
    assert (h * norm <= CURVATURE_BOUND * (1 + 1e-6)).all() and (h <= rounding).all()
    torch.testing.assert_close(h[0], torch.tensor(CURVATURE_BOUND / 1e4))
    torch.testing.assert_close(h[1], rounding[1])
