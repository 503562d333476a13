"""The regulariser's hot path: one host transfer per step on every backend (none with sync=False), the
label range checked at that transfer, the monitor's diagnosis of the input on its failure path only,
rfd's generator=, no probe under no_grad, Triton launches under the input's device guard.

Host synchronisations are counted on CPU by wrapping every Tensor method that hands a value to the
host (item, tolist, __float__, __int__, __bool__, __index__, numpy): on a GPU each of them waits for
the device. (On CUDA, torch.cuda.set_sync_debug_mode would count them directly.)
"""
import collections
import contextlib
import copy
import os

import pytest
import torch

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast._estimators.passes import ModelPasses
from margreg_fast._monitor import SecantMonitor, SecantWarning, stats_dtype
from margreg_fast.kit.models import ResidualCNN
from margreg_fast._ops import triton_head

TO_HOST = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


@contextlib.contextmanager
def host_transfers(monkeypatch):
    calls = collections.Counter()

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return method(self, *args, **kwargs)
        return wrapper

    with monkeypatch.context() as patch:
        for name in TO_HOST:
            patch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        yield calls


@pytest.fixture
def bn_model():
    torch.manual_seed(0)
    return ResidualCNN(in_channels=3, width=4, blocks=1).train(), torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])


def _backends():
    """Every head-op backend that runs here: torch, native, and triton under its interpreter (CI)."""
    return ["torch", "native"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("method", ["rfd", "exact", "central", "fd", "jvp"])
def test_one_host_transfer_per_step(bn_model, monkeypatch, method, fraction, backend):
    """Every backend: the torch and triton backends' target range check rides on the step's one transfer."""
    model, x, y = bn_model
    reg = MarginalDensityRegularizer(1.0, estimator=method, fraction=fraction, backend=backend)
    reg(model, x, y)  # warm: first-call work (e.g. backend selection) is not the steady state
    with host_transfers(monkeypatch) as calls:
        loss, stats = reg(model, x, y)
    assert sum(calls.values()) == 1 and calls["tolist"] == 1, calls
    assert all(type(v) is float for v in stats.values())


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("method", ["rfd", "central"])
def test_sync_false_makes_no_host_transfer_and_keeps_the_stats_on_the_device(bn_model, monkeypatch, method, backend):
    model, x, y = bn_model
    synced = MarginalDensityRegularizer(1.0, estimator=method, backend=backend)
    lazy = MarginalDensityRegularizer(1.0, estimator=method, backend=backend, sync=False)
    lazy(model, x, y)
    states = [copy.deepcopy(model.state_dict()), torch.get_rng_state()]
    with host_transfers(monkeypatch) as calls:
        loss, stats = lazy(model, x, y)
    assert sum(calls.values()) == 0, calls
    assert lazy.monitor.steps == 0 and stats.keys() == {"ce", "penalty", "grad_norm", "secant_ratio"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.float64 for v in stats.values())
    model.load_state_dict(states[0])
    torch.set_rng_state(states[1])
    want_loss, want = synced(model, x, y)
    assert loss.item() == want_loss.item()
    assert {k: float(v) for k, v in stats.items()} == pytest.approx(want, rel=1e-12, nan_ok=True)


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("backend", _backends())
def test_an_out_of_range_label_raises_at_the_one_transfer(bn_model, backend, sync):
    model, x, y = bn_model
    bad = y.clone()
    bad[2] = 10  # ResidualCNN has 10 classes
    # sync=False: a device assert (a RuntimeError on CPU); the native kernel checks the range itself
    error = ValueError if sync or backend == "native" else RuntimeError
    with pytest.raises(error, match=r"class index (10 )?outside \[0, 10\)"):
        MarginalDensityRegularizer(1.0, backend=backend, sync=sync)(model, x, bad)
    MarginalDensityRegularizer(1.0, backend=backend, sync=sync)(model, x, torch.tensor([0, -100, 9, 3]))


def test_stats_avoid_float64_where_the_device_has_none():
    assert stats_dtype(torch.device("mps")) == torch.float32
    assert stats_dtype(torch.device("cpu")) == stats_dtype(torch.device("cuda")) == torch.float64


@pytest.mark.parametrize("fault", ["nan", "inf", "empty"])
def test_the_monitor_names_a_non_finite_input_or_an_empty_batch(bn_model, fault):
    model, x, y = bn_model
    x = x.clone()
    if fault == "empty":
        x, y = x[:0], y[:0]
    else:
        x[1, 0, 2, 3] = float(fault)
    with pytest.warns(SecantWarning) as record:
        MarginalDensityRegularizer(1.0)(model.eval(), x, y)
    message = str(record[0].message)
    assert ("The batch is empty" if fault == "empty" else "input batch holds NaN or infinite values") in message
    assert "diverged" not in message


def test_a_diverged_penalty_on_a_finite_input_is_still_named_as_such():
    monitor = SecantMonitor("rfd")
    with pytest.warns(SecantWarning, match="The input gradient diverged"):
        monitor.update(float("nan"), float("inf"), float("inf"), torch.ones(2, 3))


def test_generator_draws_rfd_signs_and_leaves_the_global_generator_alone(bn_model):
    model, x, y = bn_model
    results = []
    for seed in (7, 7, 8):
        before = torch.get_rng_state()
        loss, _ = MarginalDensityRegularizer(1.0, generator=torch.Generator().manual_seed(seed))(model.eval(), x, y)
        assert torch.equal(torch.get_rng_state(), before)  # an eval-mode model draws nothing else
        results.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])


def test_bad_generator_raises(bn_model):
    model, x, _ = bn_model
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        marginal_density_penalty(model, x, generator=7)
    with pytest.raises(ValueError, match="generator is on cpu, the inputs on meta"):
        marginal_density_penalty(model, x.to("meta"), generator=torch.Generator())


def test_rfd_under_no_grad_runs_no_probe_and_draws_nothing(bn_model, monkeypatch):
    model, x, _ = bn_model
    model.eval()
    exact = marginal_density_penalty(model, x, estimator="exact", reduction="none").detach()

    def no_probe(self, x):
        raise AssertionError("probe called")

    monkeypatch.setattr(ModelPasses, "probe", no_probe)
    before = torch.get_rng_state()
    with torch.no_grad():
        got = marginal_density_penalty(model, x, estimator="rfd", reduction="none")
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=0)


def test_triton_launches_under_the_inputs_device_guard(monkeypatch):
    """On CPU no CUDA device exists: the guard is recorded by a stand-in for torch.cuda.device."""
    entered = []

    class Guard(contextlib.nullcontext):
        def __init__(self, device):
            super().__init__()
            entered.append(torch.device(device))

    monkeypatch.setattr(torch.cuda, "device", Guard)
    with triton_head._launching(torch.device("cuda", 1)):
        assert entered == [torch.device("cuda", 1)]
    with triton_head._launching(torch.device("cpu")):
        assert len(entered) == 1
