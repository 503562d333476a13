"""Attribution methods on a linear model, where each has a closed form: for z = W x + b and target t,
saliency = W_t, integrated gradients (zero baseline) = x * W_t, zero ablation = x * W_t."""
import pytest
import torch

from margreg_fast.kit.attribution import METHODS, attribute


@pytest.fixture
def linear():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 3, 5)).double()
    x = torch.rand(7, 1, 4, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    return model, x, t, model[1].weight.view(5, 1, 4, 3)


def test_saliency_is_weight_row(linear):
    model, x, t, w = linear
    # exact: the input gradient of a linear map is its weight row, no rounding involved
    torch.testing.assert_close(attribute(model, x, t, method="saliency"), w[t], rtol=0, atol=0)


def test_integrated_gradients_is_x_times_w(linear):
    model, x, t, w = linear
    a = attribute(model, x, t, method="integrated_gradients", n_steps=8)
    # the integrand is constant; the only error is Captum's quadrature weights, which it stores in
    # float32 (their sum is 1 to ~1e-7 relative)
    torch.testing.assert_close(a, x * w[t], rtol=1e-6, atol=1e-12)


def test_ablation_is_x_times_w(linear):
    model, x, t, w = linear
    a = attribute(model, x, t, method="ablation", perturbations_per_eval=5)
    # z(x) - z(x with x_j = 0) = w_j x_j up to float64 rounding of the two logits (~1e-16 * |z|)
    torch.testing.assert_close(a, x * w[t], rtol=0, atol=1e-13)


def test_int_target_and_modes_restored(linear):
    model, x, _, w = linear
    model.train()
    a = attribute(model, x, 2, method="saliency")
    torch.testing.assert_close(a, w[2].expand_as(x), rtol=0, atol=0)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_eval_mode_used():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.9), torch.nn.Linear(4, 2))
    model.train()
    x = torch.rand(64, 1, 2, 2)
    a = attribute(model, x, 0, method="saliency")
    # in train mode dropout would zero ~90% of the gradient entries; in eval mode none
    torch.testing.assert_close(a, model[2].weight[0].view(1, 1, 2, 2).expand_as(x), rtol=0, atol=0)


def test_bad_input(linear):
    model, x, t, _ = linear
    with pytest.raises(ValueError, match="method"):
        attribute(model, x, t, method="lime")
    with pytest.raises(ValueError, match="target"):
        attribute(model, x, t[:3])
    assert set(METHODS) == {"saliency", "integrated_gradients", "ablation"}


@pytest.mark.parametrize("target", [torch.tensor([0.0, 1.7, 2.0, 3.0, 4.0, 0.0, 1.0]), torch.tensor(2.5), 2.5, True])
def test_non_integer_target_is_a_type_error_not_truncated(linear, target):
    model, x, _, _ = linear
    with pytest.raises(TypeError, match="target must"):
        attribute(model, x, target)
