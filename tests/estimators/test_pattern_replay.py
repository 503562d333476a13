"""Activation-pattern replay (margreg_fast/_estimators/patterns.py): the probes compute each ReLU, clamp
(ReLU6, hardtanh), leaky ReLU and max pool on the clean pass's linear piece.

"Before" (today's probes, which cross kinks) is the same code with the table of intercepted ops
emptied (``PIECEWISE = {}``): nothing is recorded or replayed, exactly the code path of a model
without piecewise-linear ops.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import margreg_fast._estimators.passes as passes_module
from margreg_fast._estimators import ModelPasses, estimate
from margreg_fast._estimators.patterns import PatternReplayError
from tests.estimators.references import cosine
from tests.timm_import import import_timm

timm = import_timm()


class _Cnn(nn.Module):
    """Conv-BN-ReLU(in place)-MaxPool, Conv-BN-ReLU6, Conv-leaky ReLU (functional), mean pool, linear."""

    def __init__(self, act=None) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.a1, self.pool = act or nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.c2, self.b2, self.a2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), act or nn.ReLU6()
        self.c3, self.fc = nn.Conv2d(6, 6, 3, padding=1), nn.Linear(6, 5)
        self.smooth = act is not None

    def forward(self, x):
        x = self.pool(self.a1(self.b1(self.c1(x))))
        x = self.a2(self.b2(self.c2(x)))
        x = self.c3(x)
        x = F.silu(x) if self.smooth else F.leaky_relu(x, 0.1)
        return self.fc(x.mean((2, 3)))


def _net(act=None):
    torch.manual_seed(0)
    return _Cnn(act).double().train(), torch.randn(8, 3, 8, 8, dtype=torch.float64)


@pytest.fixture
def before(monkeypatch):
    """Inside: today's probes (no op intercepted)."""
    def switch():
        monkeypatch.setattr(passes_module, "PIECEWISE", {})
    return switch


def _secant_error(net, x, h):
    """Per sample, (S(probe at x + h v) - S(x)) / h / ||g|| - 1, v = g / ||g|| (g by autograd at x)."""
    passes = ModelPasses(net)
    x_in = x.clone().requires_grad_(True)
    s = torch.logsumexp(passes.clean(x_in), 1)
    with passes.input_gradient():
        (g,) = torch.autograd.grad(s.sum(), x_in)
    norm = g.flatten(1).norm(dim=1)
    v = g / norm[:, None, None, None]
    s1 = torch.logsumexp(passes.probe(x + h * v), 1)
    return ((s1 - s) / h / norm - 1).detach()


def test_the_secant_slope_is_the_directional_derivative_up_to_smooth_curvature(before):
    net, x = _net()
    errors = {h: _secant_error(net, x, h) for h in (0.1, 0.05)}
    # O(h) from the smooth ops' curvature only: the error halves with h (measured ratio 2.000), and at
    # h = 0.1 (0.1 RMS(x)) it is 1.2e-3 at most (v^T H v h / 2 ||g||)
    assert torch.allclose(errors[0.1] / errors[0.05], torch.full_like(errors[0.1], 2.0), atol=0.05)
    assert errors[0.1].abs().max() < 2e-3
    before()
    old = _secant_error(net, x, 0.1)
    # today's probe crosses ReLU / clamp / max-pool kinks at this step: 35x the error (0.041)
    assert old.abs().max() > 10 * errors[0.1].abs().max()


def _penalty_gradient(net, x, method, step, seed=0):
    est = estimate(net, x, None, penalty_kind="marginal", estimator=method, step=step,
                   generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad(est.value.mean(), list(net.parameters()))
    return torch.cat([t.flatten() for t in grads]), est


@pytest.mark.parametrize("step", [0.01, 0.1])
def test_rfd_parameter_gradient_matches_exact(before, step):
    net, x = _net()
    exact, _ = _penalty_gradient(net, x, "exact", "auto")
    rfd, est = _penalty_gradient(net, x, "rfd", step)
    # O(h) relative error from smooth curvature: measured 1.19e-2 h; bound 2e-2 h
    assert ((rfd - exact).norm() / exact.norm()).item() < 2e-2 * step
    assert cosine(rfd, exact) > 0.999
    before()
    old, _ = _penalty_gradient(net, x, "rfd", step)
    assert cosine(old, exact) < 0.9  # measured 0.43 (0.01), 0.51 (0.1)


@pytest.mark.parametrize("method", ["fd", "central", "jvp"])
def test_every_probing_estimator_replays(method):
    net, x = _net()
    est = estimate(net, x, None, penalty_kind="marginal", estimator=method, step=0.1)
    ratio = est.slope / est.grad_norm
    # fd: O(h) (1.2e-3 at h = 0.1, above); central: O(h^2); jvp: exact
    assert (ratio - 1).abs().max() < 2e-3


def test_timm_batch_norm_act_with_in_place_relu():
    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", act_layer="relu", num_classes=10).double().train()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    params = list(net.parameters())

    def grad(method, step):
        est = estimate(net, x, None, penalty_kind="marginal", estimator=method, step=step,
                       generator=torch.Generator().manual_seed(0))
        return torch.cat([t.flatten() for t in torch.autograd.grad(est.value.mean(), params)])

    exact = grad("exact", "auto")
    for step in ("auto", 1e-3):  # before: cosine 0.39..-0.06 at the automatic step (issue 22's benchmark)
        assert cosine(grad("rfd", step), exact) > 0.999


def test_the_regulariser_subset_replays_its_rows():
    net, x = _net()
    passes = ModelPasses(net)
    with torch.enable_grad():
        passes.clean(x)
    idx = torch.tensor([5, 1, 6])
    passes.rows(idx, x.shape[0])
    est = estimate(net, x[idx], None, penalty_kind="marginal", estimator="fd", step=0.1, passes=passes)
    assert ((est.slope / est.grad_norm) - 1).abs().max() < 2e-3


class _Flaky(nn.Module):
    """One ReLU more (``more``) or less on every forward after the first."""

    def __init__(self, more: bool) -> None:
        super().__init__()
        self.lin, self.calls, self.more = nn.Linear(4, 3), 0, more

    def forward(self, x):
        self.calls += 1
        x = torch.relu(self.lin(x))
        return F.relu(x) if (self.calls > 1) == self.more else x


class _Reshaped(nn.Module):
    """A ReLU on an input whose shape differs between the clean pass and the probes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.calls = nn.Linear(4, 4), 0

    def forward(self, x):
        self.calls += 1
        y = self.lin(x)
        return torch.relu(y if self.calls == 1 else y[:, :2]).sum(1, keepdim=True).expand(-1, 3) + y[:, :3]


@pytest.mark.parametrize("model, match", [
    (lambda: _Flaky(more=True), "call #2 of a probe pass is relu on an input of shape \\(5, 3\\); the clean pass's "
                                "call #2: none"),
    (lambda: _Flaky(more=False), "a probe pass made 1 piecewise-linear .* the clean pass 2"),
    (_Reshaped, "call #1 of a probe pass is relu on an input of shape \\(5, 2\\); the clean pass's call #1: relu on "
                "an input of shape \\(5, 4\\)")])
def test_a_probe_whose_calls_differ_raises(model, match):
    torch.manual_seed(0)
    with pytest.raises(PatternReplayError, match=match):
        estimate(model(), torch.randn(5, 4), None, penalty_kind="marginal", estimator="rfd", step="auto")


def test_a_smooth_model_is_bit_identical_to_before(before):
    net, x = _net(nn.SiLU())
    now, est_now = _penalty_gradient(net, x, "rfd", "auto")
    before()
    old, est_old = _penalty_gradient(net, x, "rfd", "auto")
    assert torch.equal(now, old) and torch.equal(est_now.value, est_old.value)
    assert torch.equal(est_now.slope, est_old.slope)


def test_a_compiled_model_without_batch_norm_falls_back_to_todays_probes(before):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    compiled = torch.compile(net, backend="eager")
    assert not ModelPasses(compiled).replays_patterns  # its passes stay compiled: the ops are not seen
    assert ModelPasses(torch.compile(_net()[0], backend="eager")).replays_patterns  # run eagerly: replayed
    x = torch.randn(5, 4, dtype=torch.float64)
    got = estimate(compiled, x, None, penalty_kind="marginal", estimator="fd", step=0.5).value
    before()
    assert torch.equal(got, estimate(net, x, None, penalty_kind="marginal", estimator="fd", step=0.5).value)
