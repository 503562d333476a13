"""A torch.compile'd model with train-mode BatchNorm gives the eager results; its passes run eagerly.

While an estimate runs, the passes of a compiled model with train-mode BatchNorm run under
``torch.compiler.set_stance("force_eager")`` (passes.py, "torch.compile"): a compiled graph broken at
each batch-norm call would hand the call's output to the next graph as an input, and AOTAutograd
fails on an in-place activation of such an input (timm's BatchNormAct2d, ``inplace=True``). The
backend counts the graphs it receives: none during the regularised steps, and the model's own
forward outside them still compiles (the stance is scoped). The backend runs them through
AOTAutograd (aot_eager), same aten ops as eager, so the tolerance is float64 rounding.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast._estimators import UnsupportedEstimatorError

TOL = dict(rtol=1e-9, atol=1e-12)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        a = F.relu(self.bn1(self.conv1(x)), inplace=True)
        a = F.silu(self.bn2(self.conv2(a)))
        return self.head(a.mean(dim=(2, 3)))


class CountingBackend:
    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)


@pytest.fixture
def models():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = BNNet().double().train()
    net = copy.deepcopy(eager)
    backend = CountingBackend()
    return eager, net, torch.compile(net, backend=backend), backend


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=gen), torch.randint(0, 5, (6,), generator=gen)


def _step(model, params, method, x, y):
    torch.manual_seed(3)
    loss, stats = MarginalDensityRegularizer(1.0, estimator=method)(model, x, y)
    return loss, stats, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("method", ["rfd", "central", "fd"])
def test_compiled_step_equals_eager_and_its_passes_run_eagerly(models, method):
    eager, net, compiled, backend = models
    x, y = _data()
    for _ in range(2):  # twice: running statistics move alike
        want = _step(eager, list(eager.parameters()), method, x, y)
        got = _step(compiled, list(net.parameters()), method, x, y)
        torch.testing.assert_close(got[0], want[0], **TOL)
        assert got[1]["secant_ratio"] == pytest.approx(want[1]["secant_ratio"], rel=1e-9)
        for a, b in zip(got[2], want[2]):
            torch.testing.assert_close(a, b, **TOL)
    assert backend.graphs == 0
    for a, b in zip(net.buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, **TOL)
    torch.manual_seed(3)
    per_sample = marginal_density_penalty(compiled, x, estimator=method, reduction="none")
    torch.manual_seed(3)
    torch.testing.assert_close(per_sample, marginal_density_penalty(eager, x, estimator=method, reduction="none"), **TOL)
    assert backend.graphs == 0
    with torch.no_grad():  # outside an estimate the model runs compiled
        compiled(x)
    assert backend.graphs > 0


def test_compiled_exact_raises_clearly(models):
    """AOTAutograd's compiled backward is once differentiable: exact says so instead of a wrong or odd error."""
    _, _, compiled, _ = models
    x, y = _data()
    with pytest.raises(UnsupportedEstimatorError, match="torch.compile"):
        MarginalDensityRegularizer(1.0, estimator="exact")(compiled, x, y)


def test_exact_on_a_compiled_residual_batchnorm_net_raises_before_any_pass():
    """A retained compiled segment between graph breaks can fail on its tangents before AOTAutograd's own
    double-backward message; the check must catch every compiled module first, and change no state."""
    from margreg_fast.kit.models import ResidualCNN

    torch.manual_seed(0)
    model = ResidualCNN(in_channels=3, width=4, blocks=1)
    compiled = torch.compile(model)
    before = copy.deepcopy(model.state_dict())
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    for net in (compiled, nn.Sequential(compiled)):  # compiled itself, or a compiled submodule
        with pytest.raises(UnsupportedEstimatorError, match="torch.compile"):
            MarginalDensityRegularizer(1.0, estimator="exact")(net, x, y)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_compiled_batch_norm_act_with_an_in_place_activation_equals_eager():
    """The issue's repro: timm's BatchNormAct2d (SiLU in place) compiled by inductor. The regularised step
    failed in the input-gradient backward (a graph input modified in place); it now equals the eager step.
    fp32: the passes run eagerly, so the only difference is none (the same ops); tolerance as eager fp32."""
    from tests.timm_import import import_timm

    timm = import_timm()
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), timm.layers.BatchNormAct2d(8, act_layer="silu"),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).train()
    net = copy.deepcopy(eager)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for method in ("rfd", "central"):
        want = _step(eager, list(eager.parameters()), method, x, y)
        got = _step(torch.compile(net), list(net.parameters()), method, x, y)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0)
        for a, b in zip(got[2], want[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_compiled_timm_mobilenetv3_equals_eager():
    """The README's kind of model: timm's mobilenetv3_small_050 (BatchNormAct2d with in-place hard-swish,
    squeeze-excite, train mode) compiled; its regularised step equals the eager model's (the passes run
    eagerly: the same ops, so float64 rounding)."""
    from tests.timm_import import import_timm

    timm = import_timm()
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = timm.create_model("mobilenetv3_small_050", num_classes=5).double().train()
    net = copy.deepcopy(eager)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 5, (4,))
    want = _step(eager, list(eager.parameters()), "rfd", x, y)
    got = _step(torch.compile(net), list(net.parameters()), "rfd", x, y)
    torch.testing.assert_close(got[0], want[0], **TOL)
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, **TOL)
