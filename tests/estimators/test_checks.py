"""The data checks: model output, plain-function models, labels, input and number arguments.

Each rule raises a TypeError (wrong kind) or ValueError (wrong shape / value) naming what it got,
for every estimator and through both public entry points, or gives the right answer.
"""
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from margreg_fast._estimators import ESTIMATOR_NAMES
from margreg_fast._penalty import input_gradient_penalty, marginal_density_penalty
from margreg_fast._regularizer import MarginalDensityRegularizer

B, C, D = 4, 3, 5


def _linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, C)).double()


def _x():
    return torch.rand(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


class Reshaped(nn.Module):
    """A valid classifier whose output is turned into something that is not (B, C) logits."""

    def __init__(self, form):
        super().__init__()
        self.net, self.form = _linear(), form

    def forward(self, x):
        z = self.net(x)
        if self.form == "btc":  # a sequence model: (B, T, C)
            return torch.stack([z, 2 * z], dim=1)
        if self.form == "bc11":
            return z[:, :, None, None]
        if self.form == "flat":
            return z.flatten()
        if self.form == "tuple":
            return z, z.detach()
        return {"logits": z}


BAD_OUTPUTS = [("btc", ValueError, r"shape \(4, 2, 3\)"), ("bc11", ValueError, r"shape \(4, 3, 1, 1\)"),
               ("flat", ValueError, r"shape \(12,\)"), ("tuple", TypeError, "a tuple"), ("dict", TypeError, "a dict")]


@pytest.mark.parametrize("form, err, returned", BAD_OUTPUTS)
@pytest.mark.parametrize("method", ESTIMATOR_NAMES)
def test_model_output_must_be_logits(form, err, returned, method):
    model, x, y = Reshaped(form), _x(), torch.tensor([0, 1, 2, 0])
    calls = [lambda: marginal_density_penalty(model, x, estimator=method),
             lambda: input_gradient_penalty(model, x, y, penalty_kind="joint", estimator=method),
             lambda: MarginalDensityRegularizer(1.0, estimator=method)(model, x, y)]
    for call in calls:
        with pytest.raises(err, match=rf"model's output must be \(B, C\) logits.*got .*{returned}"):
            call()


@pytest.mark.parametrize("form, err, returned", BAD_OUTPUTS)
def test_model_output_checked_for_plain_cross_entropy_too(form, err, returned):
    with pytest.raises(err, match=returned):
        MarginalDensityRegularizer(1.0, penalty_kind="none")(Reshaped(form), _x(), torch.tensor([0, 1, 2, 0]))


@pytest.mark.parametrize("method", ESTIMATOR_NAMES)
@pytest.mark.parametrize("kind", ["marginal", "conditional", "joint"])
def test_plain_function_model_works_with_every_method(method, kind):
    """A functional_call lambda is a model: every estimator gives what it gives on the module."""
    module, x, y = _linear(), _x(), torch.tensor([0, 1, 2, 0])
    params = dict(module.named_parameters())
    function = lambda xx: functional_call(module, params, (xx,))  # noqa: E731

    def penalty(model):
        torch.manual_seed(0)  # rfd's random signs: the same draw for both models
        if kind == "marginal":
            return marginal_density_penalty(model, x, estimator=method, reduction="none")
        return input_gradient_penalty(model, x, y, penalty_kind=kind, estimator=method, reduction="none")

    got, want = penalty(function), penalty(module)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    g_got = torch.autograd.grad(got.sum(), list(params.values()), allow_unused=True)
    g_want = torch.autograd.grad(want.sum(), list(params.values()), allow_unused=True)
    for a, b in zip(g_got, g_want):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-12, atol=0))
    loss, _ = MarginalDensityRegularizer(1.0, estimator=method, penalty_kind=kind)(function, x, y)
    assert torch.isfinite(loss)


def test_not_callable_model_is_a_type_error():
    with pytest.raises(TypeError, match="model must be callable.*got str"):
        marginal_density_penalty("resnet", _x())


@pytest.mark.parametrize("labels", [torch.tensor([0.0, 1.0, 2.0, 0.0]), torch.tensor([True, False, True, True])])
def test_non_integer_labels_are_a_type_error(labels):
    model, x = _linear(), _x()
    for call in (lambda: input_gradient_penalty(model, x, labels), lambda: MarginalDensityRegularizer(1.0)(model, x, labels)):
        with pytest.raises(TypeError, match=f"y must hold integer class indices, got dtype {labels.dtype}"):
            call()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_label_dtype_is_accepted(dtype):
    model, x, y = _linear(), _x(), torch.tensor([0, 1, 2, 0])
    want, _ = MarginalDensityRegularizer(1.0, penalty_kind="conditional")(model, x, y)
    got, _ = MarginalDensityRegularizer(1.0, penalty_kind="conditional")(model, x, y.to(dtype))
    assert got.item() == want.item()


def test_a_single_sample_without_batch_dimension_is_named():
    """An (8, 8) image without a batch dimension reads as 8 samples: the error says so, naming x."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    with pytest.raises(ValueError, match=r"y must hold one label per sample, shape \(8,\), got shape \(1,\).*"
                                         r"x \(shape \(8, 8\)\) is the batch.*x\[None\]"):
        MarginalDensityRegularizer(1.0)(model, torch.rand(8, 8), torch.tensor([1]))


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(2), torch.tensor(0.5),
                                   torch.tensor(0.5, dtype=torch.float64)])
def test_numpy_and_0d_tensor_weights_and_steps_are_numbers(value):
    model, x, y = _linear(), _x(), torch.tensor([0, 1, 2, 0])
    reg = MarginalDensityRegularizer(value, step=value)
    assert reg.weight == float(value) and type(reg.weight) is float and reg.step == float(value)
    want = marginal_density_penalty(model, x, step=float(value))
    assert marginal_density_penalty(model, x, step=value).item() == want.item()
    loss, _ = reg(model, x, y)
    want_loss, _ = MarginalDensityRegularizer(float(value), step=float(value))(model, x, y)
    assert loss.item() == want_loss.item()


@pytest.mark.parametrize("value, err, named", [
    (torch.tensor([0.5]), TypeError, r"a tensor of shape \(1,\)"), (np.array([0.5]), TypeError, "ndarray"),
    (True, TypeError, "bool"), ("0.5", (TypeError, ValueError), "'0.5'|str"), (-1.0, ValueError, "-1.0"),
    (float("inf"), ValueError, "inf"),
])
def test_bad_weights_and_steps_name_what_they_got(value, err, named):
    for kwargs in (dict(weight=value), dict(weight=1.0, step=value)):
        with pytest.raises(err, match=named):
            MarginalDensityRegularizer(**kwargs)
