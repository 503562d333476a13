"""A torch.compile'd model with train-mode BatchNorm stays compiled, and gives the eager results.

The batch-norm handler is excluded from dynamo (graphs break at each batch-norm call while an estimate
runs); everything between the calls is compiled. Were the gradient switch traced into a graph, its
backward would read a flag baked in at trace time: the parameter gradients, compared here in
float64 with the eager model's, would then differ. The backend counts the graphs it receives and
runs them through AOTAutograd (aot_eager), which traces backward graphs too; same aten ops as
eager, so the tolerance is float64 rounding of a reordered sum.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast.estimators import UnsupportedEstimatorError

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
    loss, stats = MarginalDensityRegularizer(1.0, method=method)(model, x, y)
    return loss, stats, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("method", ["rfd", "central", "fd"])
def test_compiled_step_equals_eager_and_runs_compiled_graphs(models, method):
    eager, net, compiled, backend = models
    x, y = _data()
    for _ in range(2):  # twice: running statistics move alike, and the second step compiles nothing new
        want = _step(eager, list(eager.parameters()), method, x, y)
        got = _step(compiled, list(net.parameters()), method, x, y)
        torch.testing.assert_close(got[0], want[0], **TOL)
        assert got[1]["secant_ratio"] == pytest.approx(want[1]["secant_ratio"], rel=1e-9)
        for a, b in zip(got[2], want[2]):
            torch.testing.assert_close(a, b, **TOL)
        if _ == 0:
            graphs = backend.graphs
    assert graphs > 0 and backend.graphs == graphs
    for a, b in zip(net.buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, **TOL)
    torch.manual_seed(3)
    per_sample = marginal_density_penalty(compiled, x, method=method, reduction="none")
    torch.manual_seed(3)
    torch.testing.assert_close(per_sample, marginal_density_penalty(eager, x, method=method, reduction="none"), **TOL)


def test_compiled_exact_equals_eager_or_raises_clearly(models):
    eager, net, compiled, _ = models
    x, y = _data()
    want = _step(eager, list(eager.parameters()), "exact", x, y)
    try:
        got = _step(compiled, list(net.parameters()), "exact", x, y)
    except UnsupportedEstimatorError:
        return
    torch.testing.assert_close(got[0], want[0], **TOL)
    for a, b in zip(got[2], want[2]):
        torch.testing.assert_close(a, b, **TOL)
