"""The passes of one estimate: batch-norm calls intercepted wherever they happen, random draws replayed.

References are independent of the mechanism under test: BatchNorm by an eval-mode copy whose running
statistics are the batch's biased statistics (float64, so the 1e-10 relative tolerance is rounding
only); dropout by an eval-mode twin that multiplies by the masks recorded in a plain forward from the
same generator state.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from margreg_fast import marginal_density_penalty
from margreg_fast._estimators.passes import HeldStatisticsError, ModelPasses, batch_statistics, native_statistics
from tests.estimators.references import batch_statistics_copy, cosine, flat_grad, per_sample, ratio


class BatchNormAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: a BatchNorm2d subclass whose forward also applies an in-place activation."""

    def forward(self, x):
        return F.hardswish(super().forward(x), inplace=True)


class FunctionalBN(nn.Module):
    """Calls F.batch_norm and torch.batch_norm directly, then in-place activations."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.bn = BatchNormAct(4)
        self.gamma, self.beta = nn.Parameter(torch.rand(4) + 0.5), nn.Parameter(torch.rand(4) - 0.5)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        a = self.bn(self.conv1(x))
        a = F.batch_norm(self.conv2(a), None, None, self.gamma, self.beta, training=True).relu_()
        a = torch.batch_norm(a, self.gamma, None, None, None, True, 0.1, 1e-5, False)
        return self.head(F.silu(a).mean(dim=(2, 3)))


class Twin(FunctionalBN):
    """FunctionalBN with the functional calls' batch statistics given as constants (the reference)."""

    def __init__(self, model, x):
        super().__init__()
        self.double().load_state_dict(model.state_dict())
        self.bn = batch_statistics_copy(model, x).bn
        with torch.no_grad():
            a = model.bn(model.conv1(x))
            c = model.conv2(a)
            self.s2 = torch.var_mean(c, dim=(0, 2, 3), unbiased=False)
            a = F.batch_norm(c, None, None, model.gamma, model.beta, training=True).relu_()
            self.s3 = torch.var_mean(a, dim=(0, 2, 3), unbiased=False)

    def forward(self, x):
        a = self.bn(self.conv1(x))
        a = F.batch_norm(self.conv2(a), self.s2[1], self.s2[0], self.gamma, self.beta).relu_()
        a = F.batch_norm(a, self.s3[1], self.s3[0], self.gamma, None)
        return self.head(F.silu(a).mean(dim=(2, 3)))


@pytest.fixture
def functional_bn():
    torch.manual_seed(0)
    model = FunctionalBN().double().train()
    return model, torch.rand(6, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_functional_and_subclassed_batch_norm_with_inplace_activations_are_held(functional_bn):
    model, x = functional_bn
    exact = per_sample(model, x, "exact")
    reference = per_sample(Twin(model, x).eval(), x, "exact")
    torch.testing.assert_close(exact, reference, rtol=1e-10, atol=0)
    for method in ("central", "rfd", "jvp"):
        torch.testing.assert_close(per_sample(model, x, method), exact, rtol=1e-3, atol=0)
    for method in ("fd", "central", "rfd"):
        assert abs(ratio(model, x, method) - 1) < 1e-3


def test_running_statistics_move_once_per_estimate(functional_bn):
    model, x = functional_bn
    plain = copy.deepcopy(model)
    plain(x)
    for method in ("exact", "jvp", "fd", "central", "rfd"):
        twin = copy.deepcopy(model)
        per_sample(twin, x, method)
        for a, b in zip(twin.buffers(), plain.buffers()):
            assert torch.equal(a, b), method


class FunctionalRunningStats(nn.Module):
    """F.batch_norm with running buffers of its own (no BatchNorm module to freeze)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("mean", torch.zeros(4))
        self.register_buffer("var", torch.ones(4))

    def forward(self, x):
        return self.lin(F.batch_norm(x, self.mean, self.var, training=True))


def test_recomputing_given_logits_moves_no_running_statistic():
    model, x = FunctionalRunningStats(), torch.rand(6, 4)
    logits = model(x)  # the caller's forward updates the buffers, once
    mean, var = model.mean.clone(), model.var.clone()
    for method in ("exact", "rfd", "central"):
        marginal_density_penalty(model, x, logits=logits, estimator=method)  # x without grad: recomputed
        assert torch.equal(model.mean, mean) and torch.equal(model.var, var), method


class Flaky(nn.Module):
    """Makes one more batch-norm call on every other forward."""

    def __init__(self):
        super().__init__()
        self.lin, self.calls = nn.Linear(4, 3), 0

    def forward(self, x):
        self.calls += 1
        a = F.batch_norm(x, None, None, training=True)
        if self.calls % 2 == 0:
            a = F.batch_norm(a, None, None, training=True)
        return self.lin(a)


def test_probe_whose_batch_norm_calls_differ_raises():
    with pytest.raises(HeldStatisticsError, match="call #2 of a probe pass has 4 channels; the clean pass's call #2: none"):
        marginal_density_penalty(Flaky(), torch.rand(4, 4), estimator="rfd")


def test_multi_process_sync_batch_norm_ops_raise_clearly():
    class Synced(nn.Module):  # what SyncBatchNorm runs across processes (CUDA only; intercepted before dispatch)
        def forward(self, x):
            mean, invstd = torch.batch_norm_stats(x, 1e-5)
            return x * invstd

    with pytest.raises(HeldStatisticsError, match="multi-process SyncBatchNorm"):
        marginal_density_penalty(Synced(), torch.rand(4, 3), estimator="exact")


def test_single_process_sync_batch_norm_is_held():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.SyncBatchNorm(4), nn.Tanh(), nn.Linear(4, 5)).double()
    x = torch.rand(8, 3, dtype=torch.float64)
    reference = per_sample(batch_statistics_copy(model, x), x, "exact")
    torch.testing.assert_close(per_sample(model, x, "exact"), reference, rtol=1e-10, atol=0)


# ---- dropout: every pass draws the clean pass's masks ----------------------------------------------
class DropoutMLP(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(10, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 32), nn.Tanh(), nn.Dropout(0.5),
                         nn.Linear(32, 5))


class Masked(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


def masked_twin(model, x, seed):
    """model with each nn.Dropout replaced by the mask it draws in a plain forward from ``seed``."""
    masks = {}
    hooks = [m.register_forward_hook(lambda m, i, o: masks.__setitem__(m, o / i[0]))
             for m in model.modules() if isinstance(m, nn.Dropout)]
    torch.manual_seed(seed)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    twin = copy.deepcopy(model)
    for i, m in enumerate(model):
        if isinstance(m, nn.Dropout):
            twin[i] = Masked(masks[m])
    return twin.eval()


@pytest.fixture
def dropout_mlp():
    torch.manual_seed(0)
    return DropoutMLP().double().train(), torch.rand(16, 10, dtype=torch.float64) + 0.5  # no input is 0


def test_exact_is_the_penalty_of_the_network_with_the_clean_pass_masks(dropout_mlp):
    model, x = dropout_mlp
    reference = per_sample(masked_twin(model, x, seed=3), x, "exact")
    got = per_sample(model, x, "exact", seed=3)
    torch.testing.assert_close(got, reference, rtol=1e-10, atol=0)
    assert not torch.allclose(per_sample(model, x, "exact", seed=4), reference, rtol=1e-3)  # masks matter


@pytest.mark.parametrize("method", ["jvp", "fd", "central", "rfd"])
def test_every_estimator_sees_the_clean_pass_masks(dropout_mlp, method):
    model, x = dropout_mlp
    exact = per_sample(model, x, "exact")
    got = per_sample(model, x, method)
    torch.testing.assert_close(got, exact, rtol=1e-3, atol=0)
    g_exact, g_got = flat_grad(model, exact.mean()), flat_grad(model, got.mean())
    assert cosine(g_exact, g_got) >= 0.99
    if method != "jvp":
        assert 0.8 <= ratio(model, x, method) <= 1.25


@pytest.mark.parametrize("method", ["exact", "fd", "central", "jvp"])
def test_the_global_generator_is_left_as_the_clean_pass_left_it(dropout_mlp, method):
    model, x = dropout_mlp
    torch.manual_seed(5)
    model(x)
    after_clean = torch.get_rng_state()
    per_sample(model, x, method, seed=5)
    assert torch.equal(torch.get_rng_state(), after_clean)


def test_shared_logits_of_a_model_that_draws_random_numbers_raise(dropout_mlp):
    model, x = dropout_mlp
    xg = x.clone().requires_grad_(True)
    with pytest.raises(HeldStatisticsError, match="Omit logits="):
        marginal_density_penalty(model, xg, logits=model(xg), estimator="central")


class OnlyFunctionalBN(nn.Module):
    """A train-mode F.batch_norm in user code and no BatchNorm module to announce it."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.head(F.batch_norm(self.conv(x), None, None, training=True).tanh().mean(dim=(2, 3)))


def test_shared_logits_of_a_model_with_unannounced_batch_norm_calls_raise():
    """Shared logits carry no captured statistics: a probe that normalises with its own batch must refuse."""
    torch.manual_seed(0)
    model = OnlyFunctionalBN().double()
    xg = torch.rand(4, 3, 5, 5, dtype=torch.float64).requires_grad_(True)
    with pytest.raises(HeldStatisticsError, match="omit it"):
        marginal_density_penalty(model, xg, logits=model(xg), estimator="rfd")


def test_passes_need_a_clean_pass_before_a_probe():
    with pytest.raises(RuntimeError, match="needs a clean pass"):
        ModelPasses(nn.Linear(2, 2)).probe(torch.rand(1, 2))


def test_held_statistics_are_read_from_the_native_kernel_and_equal_recomputed_ones():
    """The clean pass reads the batch mean and variance that native batch_norm saved (mean, 1/sqrt(var +
    eps)) instead of recomputing them: values and gradients equal the recomputed ones (float64, so a
    1e-12 relative tolerance is rounding: var comes back through (var + eps) - eps)."""
    torch.manual_seed(0)
    a = (torch.randn(6, 3, 5, 5, dtype=torch.float64) * torch.tensor([1.0, 1e-2, 30.0]).view(1, 3, 1, 1)).requires_grad_()
    out = F.batch_norm(a, None, None, training=True, eps=1e-5)
    known = native_statistics(out, a, 1e-5)
    assert known is not None
    read, recomputed = batch_statistics(a, known), batch_statistics(a)
    for x, y in zip(read, recomputed):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=0)
    weights = torch.randn(2, 3, dtype=torch.float64)
    grads = [torch.autograd.grad((s[0] * weights[0] + s[1] * weights[1]).sum(), a)[0] for s in (read, recomputed)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-15)
    with torch.no_grad():  # no autograd node: recomputed
        assert native_statistics(F.batch_norm(a, None, None, training=True), a, 1e-5) is None
    # bf16 activations next to fp32 parameters (autocast): the kernel's statistics are fp32, and equal those
    # recomputed in fp32 from the bf16 values; without fp32 parameters it keeps them in bf16: recomputed
    low = a.detach().float().bfloat16().requires_grad_()
    assert native_statistics(F.batch_norm(low, None, None, training=True), low, 1e-5) is None
    out = F.batch_norm(low, None, None, torch.ones(3), torch.zeros(3), training=True)
    known = native_statistics(out, low, 1e-5)
    assert known is not None and known[0].dtype == torch.float32
    for x, y in zip(known, batch_statistics(low)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_the_clean_pass_reads_the_native_statistics(monkeypatch):
    import margreg_fast._estimators.passes as passes

    read = []
    real = passes.native_statistics
    monkeypatch.setattr(passes, "native_statistics", lambda *args: read.append(real(*args)) or read[-1])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).train()
    marginal_density_penalty(model, torch.randn(5, 1, 8, 8)).backward()
    assert len(read) == 1 and read[0] is not None


def test_batch_statistics_backward_passes_gradcheck():
    torch.manual_seed(0)
    a = (torch.randn(4, 3, 2, 3, dtype=torch.float64) + torch.tensor([0.0, 5.0, -2.0]).view(1, 3, 1, 1)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: batch_statistics(t), (a,))


def test_batch_statistics_fused_backward_in_float32_stays_within_the_activations_own_rounding():
    """The backward is (gmean / n - c mean) + c a with c = 2 gvar / n; against float64 its error is at most
    a few eps32 |c| (|a| + |mean|): the order of the rounding the stored fp32 activation carries (eps32 |a|),
    times |c|. A channel with mean 1e3 and spread 1 is where that form and the centred one differ most."""
    torch.manual_seed(0)
    a64 = torch.randn(8, 2, 16, dtype=torch.float64) + torch.tensor([1e3, 0.0], dtype=torch.float64).view(1, 2, 1)
    gmean, gvar = torch.randn(2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    grads = []
    for dtype in (torch.float64, torch.float32):
        a = a64.to(dtype).requires_grad_()
        mean, var = batch_statistics(a)
        (g,) = torch.autograd.grad((mean * gmean.to(dtype)).sum() + (var * gvar.to(dtype)).sum(), a)
        grads.append(g.double())
    n = a64.shape[0] * a64.shape[2]
    c = (2 * gvar / n).abs().view(1, 2, 1)
    bound = 4 * torch.finfo(torch.float32).eps * (c * (a64.abs() + a64.mean(dim=(0, 2)).abs().view(1, 2, 1))
                                                   + (gmean / n).abs().view(1, 2, 1))
    assert ((grads[1] - grads[0]).abs() <= bound).all()
