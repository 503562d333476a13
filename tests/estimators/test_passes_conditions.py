"""The stacks people train in: activation checkpointing, inference mode, DataParallel, EvoNorm-B, the
private-node fallback, the compiler setting's scope and the user's modules left as they were.

References are independent of the mechanism under test: the same model without checkpointing, the
same call under ``torch.no_grad`` (which gave the true value before), the recomputed statistics.
float64 throughout, so a 1e-12 relative tolerance is rounding only (the same ops in the same order
give equal results; where the order of a sum may differ, a few ulps).
"""
import copy

import pytest
import torch
import torch._functorch.config
from torch import nn
from torch.utils.checkpoint import checkpoint

import margreg_fast._estimators.passes as passes
from margreg_fast import MarginalDensityRegularizer, marginal_density_penalty
from margreg_fast._estimators.errors import is_derivative_error
from margreg_fast._estimators.passes import HeldStatisticsError, InferenceModeError
from tests.timm_import import import_timm

METHODS = ["rfd", "exact", "central", "fd", "jvp"]
TOL = dict(rtol=1e-12, atol=1e-15)


class Net(nn.Module):
    """Two conv-BatchNorm-SiLU blocks (one in place, one with dropout), optionally checkpointed as timm does."""

    def __init__(self, checkpointed=False):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.SiLU(inplace=True))
        self.b = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.SiLU(), nn.Dropout(0.2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
        self.checkpointed = checkpointed

    def forward(self, x):
        for block in (self.a, self.b):
            x = checkpoint(block, x, use_reentrant=False) if self.checkpointed else block(x)
        return self.head(x)


def _data(n=6):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def _step(model, method, x, y, **options):
    torch.manual_seed(3)
    loss, stats = MarginalDensityRegularizer(1.0, estimator=method, **options)(model, x, y)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return loss.detach(), stats, grads, [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("fraction", [1.0, 0.5])
@pytest.mark.parametrize("method", METHODS)
def test_activation_checkpointing_gives_the_uncheckpointed_step(method, fraction):
    """Loss, parameter gradient and running statistics equal the same model's without checkpointing
    (train-mode BatchNorm, an in-place activation and dropout inside the checkpointed blocks)."""
    torch.manual_seed(0)
    plain = Net().double().train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpointed = True
    x, y = _data()
    want, got = _step(plain, method, x, y, fraction=fraction), _step(ckpt, method, x, y, fraction=fraction)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[2], want[2], **TOL)
    for a, b in zip(got[3], want[3]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("method", ["rfd", "exact"])
def test_timm_grad_checkpointing_gives_the_uncheckpointed_step(method):
    """regnety_002 (train-mode BatchNorm, squeeze-excite) with timm's set_grad_checkpointing(True)."""
    timm = import_timm()
    torch.manual_seed(0)
    plain = timm.create_model("regnety_002", num_classes=5).double().train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 5, (4,))
    want, got = _step(plain, method, x, y), _step(ckpt, method, x, y)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[2], want[2], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_inference_mode_gives_the_no_grad_value(method, train):
    """Under torch.inference_mode (Lightning's evaluation) the stats equal those under torch.no_grad, with
    the input itself an inference tensor; the running statistics move as under no_grad."""
    torch.manual_seed(0)
    model = Net().double().train(train)
    x, y = _data()
    results = []
    for context in (torch.no_grad, torch.inference_mode):
        net = copy.deepcopy(model)
        torch.manual_seed(3)
        with context():
            xi, yi = x.clone(), y.clone()
            _, stats = MarginalDensityRegularizer(1.0, estimator=method)(net, xi, yi)
            per_sample = marginal_density_penalty(net, xi, estimator=method, reduction="none")
        results.append((stats, per_sample, [b.clone() for b in net.buffers()]))
    (want, want_r, want_b), (got, got_r, got_b) = results
    assert got["penalty"] > 0 and got["grad_norm"] > 0
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    torch.testing.assert_close(got_r, want_r, **TOL)
    for a, b in zip(got_b, want_b):
        torch.testing.assert_close(a, b, **TOL)


def test_a_model_built_under_inference_mode_is_refused():
    with torch.inference_mode():
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        with pytest.raises(InferenceModeError, match="created under torch.inference_mode"):
            marginal_density_penalty(model, torch.randn(2, 3, 2, 2))


def test_data_parallel_over_several_devices_is_refused_before_any_pass():
    """DataParallel's replicas run in other threads, out of the passes' reach. There is no second device
    on a CPU machine: the wrapper is given two device ids, as it has on two GPUs (it refuses before any
    forward, so no replica is ever made). One device runs in the caller's thread and is accepted."""
    torch.manual_seed(0)
    model = Net().double().train()
    wrapped = nn.DataParallel(model)
    x, y = _data()
    marginal_density_penalty(wrapped, x)  # no CUDA: DataParallel calls the module itself
    wrapped.device_ids = [0, 1]
    before = [b.clone() for b in model.buffers()]
    for fraction in (1.0, 0.5):
        with pytest.raises(HeldStatisticsError, match="DataParallel over several devices"):
            MarginalDensityRegularizer(1.0, fraction=fraction)(wrapped, x, y)
    for a, b in zip(model.buffers(), before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_train_mode_evonorm_b_is_refused_and_its_running_var_left_alone(fraction):
    timm = import_timm()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), timm.layers.EvoNorm2dB0(8), nn.Flatten(), nn.Linear(8 * 36, 5))
    model = model.double().train()
    x, y = _data(8)
    before = model[1].running_var.clone()
    with pytest.raises(HeldStatisticsError, match="EvoNorm2dB0 in train mode"):
        MarginalDensityRegularizer(1.0, fraction=fraction)(model, x, y)
    assert torch.equal(model[1].running_var, before)
    model.eval()  # normalised by its running variance: sample-wise, accepted
    assert MarginalDensityRegularizer(1.0, fraction=fraction)(model, x, y)[1]["penalty"] > 0


def test_the_native_statistics_fallback_gives_the_same_step(monkeypatch):
    """Were torch to rename the native batch-norm node (or drop its saved attributes), the statistics are
    recomputed: the step is the same to rounding."""
    torch.manual_seed(0)
    model = Net().double().train()
    x, y = _data()
    want = _step(copy.deepcopy(model), "rfd", x, y, step=1e-4)
    read = []
    real = passes.native_statistics
    monkeypatch.setattr(passes, "NATIVE_BATCH_NORM_NODE", "RenamedNativeBatchNormBackward")
    monkeypatch.setattr(passes, "native_statistics", lambda *args: read.append(real(*args)) or read[-1])
    got = _step(copy.deepcopy(model), "rfd", x, y, step=1e-4)
    assert read and all(r is None for r in read)
    torch.testing.assert_close(got[0], want[0], **TOL)
    # the statistics differ in their last bits (var read back through (var + eps) - eps); rfd's secant
    # divides a difference of logits by its step (1e-4, fixed: not the auto rule's), amplifying eps64 ~1e4-fold
    assert ((got[2] - want[2]).norm() / want[2].norm()).item() < 1e-10


class _Recording(nn.Module):
    """Records the process-wide donated_buffer setting each forward sees; raises on the forward ``fail_at``."""

    def __init__(self, fail_at=None):
        super().__init__()
        self.body = Net()
        self.seen, self.fail_at = [], fail_at

    def forward(self, x):
        self.seen.append(torch._functorch.config.donated_buffer)
        if len(self.seen) == self.fail_at:
            raise ValueError("the model failed")
        return self.body(x)


def test_the_compiler_setting_is_left_alone_for_an_eager_model():
    default = torch._functorch.config.donated_buffer
    model = _Recording().double().train()
    marginal_density_penalty(model, _data()[0])
    assert model.seen and all(seen == default for seen in model.seen)


def _module_state(model):
    """Every module's attributes other than its parameters, buffers and submodules (training, track_running_stats, ...)."""
    return [{k: v for k, v in vars(m).items() if not k.startswith("_") or k == "_forward_hooks"}
            for m in model.modules()]


@pytest.mark.parametrize("fail_at", [1, 2])
@pytest.mark.parametrize("method", ["rfd", "jvp"])
def test_no_module_attribute_is_left_changed_when_a_pass_raises(method, fail_at):
    """A model that raises in its clean pass (1) or in a probe (2): every module's attributes, its running
    statistics and the process-wide compiler setting are as before."""
    torch.manual_seed(0)
    model = _Recording(fail_at).double().train()
    before = copy.deepcopy(_module_state(model))
    buffers = [b.clone() for b in model.buffers()]
    default = torch._functorch.config.donated_buffer
    with pytest.raises(ValueError, match="the model failed"):
        MarginalDensityRegularizer(1.0, estimator=method)(model, *_data())
    after = _module_state(model)
    for a, b in zip(after, before):
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k != "seen")
    if fail_at == 1:
        for a, b in zip(model.buffers(), buffers):
            assert torch.equal(a, b)
    assert torch._functorch.config.donated_buffer == default


def test_errors_are_classified_by_type_not_by_message_text():
    """A CheckpointError that mentions torch.compile (as the issue's did) is the model's own error; a
    RuntimeError that reads like a missing derivative is not classified by its text; torch's type for a
    missing formula is."""
    from torch.utils.checkpoint import CheckpointError

    assert not is_derivative_error(CheckpointError("torch.compile ... a different number of tensors was saved"))
    assert not is_derivative_error(RuntimeError("derivative for aten::foo is not implemented"))
    assert is_derivative_error(NotImplementedError("Trying to use forward AD with foo that does not support it"))
