"""The regulariser's hot path: one host transfer per step, rfd's generator=, no probe under no_grad,
Triton launches under the input's device guard.

Host synchronisations are counted on CPU by wrapping every Tensor method that hands a value to the
host (item, tolist, __float__, __int__, __bool__, __index__, numpy): on a GPU each of them waits for
the device. (On CUDA, torch.cuda.set_sync_debug_mode would count them directly.)
"""
import collections
import contextlib

import pytest
import torch

from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast.estimators.passes import ModelPasses
from margreg_fast.kit.models import ResidualCNN
from margreg_fast.ops import triton_head

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


@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("method", ["rfd", "exact", "central", "fd", "jvp"])
def test_one_host_transfer_per_step(bn_model, monkeypatch, method, fraction):
    model, x, y = bn_model
    reg = MarginalDensityRegularizer(1.0, method=method, fraction=fraction)
    reg(model, x, y)  # warm: first-call work (e.g. backend selection) is not the steady state
    with host_transfers(monkeypatch) as calls:
        loss, stats = reg(model, x, y)
    assert sum(calls.values()) == 1 and calls["tolist"] == 1, calls
    assert all(type(v) is float for v in stats.values())


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
    exact = marginal_density_penalty(model, x, method="exact", reduction="none").detach()

    def no_probe(self, x):
        raise AssertionError("probe called")

    monkeypatch.setattr(ModelPasses, "probe", no_probe)
    before = torch.get_rng_state()
    with torch.no_grad():
        got = marginal_density_penalty(model, x, method="rfd", reduction="none")
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
