"""Each metric on a case whose answer is known by construction."""
import itertools
import math

import pytest
import scipy.stats
import torch

from margreg_fast.kit import metrics


class Lookup(torch.nn.Module):
    """Logits = the flattened input: a model whose predictions are written into its input."""

    def forward(self, x):
        return x.flatten(1)


def linear_model(w, b=0.0):
    """z(x) = w . flatten(x) + b, one logit, float64."""
    lin = torch.nn.Linear(len(w), 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w, dtype=torch.float64)[None])
        lin.bias.fill_(b)
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def one_hot_logits(pred, c=3):
    return torch.nn.functional.one_hot(torch.as_tensor(pred), c).double().view(-1, 1, 1, c)


def test_accuracy_and_worst_group():
    pred = [0, 1, 2, 2, 1, 0, 0, 1]
    y = torch.tensor([0, 1, 2, 1, 1, 2, 0, 1])
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    x = one_hot_logits(pred)
    assert metrics.accuracy(Lookup(), x, y) == 6 / 8
    assert metrics.accuracy(Lookup(), x, y, batch_size=3) == 6 / 8
    # group 0: 3/3, group 1: 1/3, group 2: 2/2
    assert metrics.group_accuracies(torch.tensor(pred), y, group) == {0: 1.0, 1: 1 / 3, 2: 1.0}
    assert metrics.worst_group_accuracy(Lookup(), x, y, group) == 1 / 3


def test_feature_leakage_known_shares():
    mask = torch.zeros(3, 1, 4, 2, dtype=torch.bool)
    mask[:, :, 2:] = True  # bottom half is the null block
    attr = torch.randn(3, 1, 4, 2)
    assert metrics.feature_leakage(attr * mask, mask) == 1.0
    assert metrics.feature_leakage(attr * ~mask, mask) == 0.0
    half = torch.ones(3, 1, 4, 2)
    half[:, :, 2:] = -1.0  # signs do not matter, only |attr|
    assert metrics.feature_leakage(half, mask) == 0.5
    # per-sample shares 1, 0, 0.5 average to 0.5; an all-zero map is left out
    mixed = torch.stack([(attr * mask)[0], (attr * ~mask)[1], half[2], torch.zeros(1, 4, 2)])
    assert metrics.feature_leakage(mixed, torch.cat([mask, mask[:1]])) == pytest.approx(0.5, abs=1e-15)
    assert math.isnan(metrics.feature_leakage(torch.zeros(2, 1, 4, 2), mask[:2]))
    with pytest.raises(TypeError, match="bool"):
        metrics.feature_leakage(attr, mask.float())


def test_insertion_exact_hand_case():
    # z = 3 x0 + 2 x1 + 1 x2 + 0 x3 + 5 on x = ones; best order inserts 3, 2, 1, 0 of the total 6
    model = linear_model([3.0, 2.0, 1.0, 0.0], b=5.0)
    x = torch.ones(1, 1, 1, 4, dtype=torch.float64)
    w = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 4)
    f, curve = metrics.insertion_curve(model, x, w, 0, steps=4)
    torch.testing.assert_close(f, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    torch.testing.assert_close(curve, torch.tensor([0, 3 / 6, 5 / 6, 1, 1], dtype=torch.float64))
    # trapezoid: 0.25 * (0/2 + 3/6 + 5/6 + 1 + 1/2) = 17/24; reversed order: 0, 0, 1/6, 1/2, 1 -> 7/24
    assert metrics.insertion_auc(model, x, w, 0, steps=4) == pytest.approx(17 / 24, abs=1e-14)
    assert metrics.insertion_auc(model, x, -w, 0, steps=4) == pytest.approx(7 / 24, abs=1e-14)


def test_insertion_best_order_beats_reversed_and_random():
    torch.manual_seed(0)
    w = torch.randn(32, dtype=torch.float64) + 1.0  # mean logit change of the full images > 0
    model = linear_model(w)
    x = torch.rand(50, 1, 4, 8, dtype=torch.float64)
    contrib = x * w.view(1, 1, 4, 8)  # exact per-pixel logit contributions
    best = metrics.insertion_auc(model, x, contrib, torch.zeros(50, dtype=torch.long), steps=32)
    worst = metrics.insertion_auc(model, x, -contrib, torch.zeros(50, dtype=torch.long), steps=32)
    rand = metrics.insertion_auc(model, x, torch.randn_like(x), torch.zeros(50, dtype=torch.long), steps=32)
    assert best > rand > worst
    # steps=d: the curve is the running sum of the sorted contributions, computed here directly
    srt = contrib.flatten(1).sort(dim=1, descending=True).values
    curve = torch.cat([torch.zeros(1, dtype=torch.float64), srt.cumsum(1).mean(0)]) / srt.sum(1).mean()
    expected = torch.trapezoid(curve, torch.linspace(0, 1, 33, dtype=torch.float64)).item()
    assert best == pytest.approx(expected, rel=1e-12)


def test_topk_intersection_known_cases():
    a = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    assert metrics.topk_intersection(a, a, 2) == 1.0
    assert metrics.topk_intersection(a, a.flip(1), 2) == 0.0  # disjoint top-2 sets
    b = torch.tensor([[4.0, 1.0, 3.0, 2.0], [-4.0, 2.0, 3.0, 1.0]])
    # sample 0: {0,1} vs {0,2} -> 1/2; sample 1 ranks |b|: {3,2} vs {0,2} -> 1/2
    assert metrics.topk_intersection(a, b, 2) == 0.5
    assert metrics.topk_intersection(a, b, 2, absolute=False) == 0.5  # sample 1: {3,2} vs {2,1}
    with pytest.raises(ValueError, match="k must be"):
        metrics.topk_intersection(a, b, 5)


def _tau_b_by_pairs(a, b):
    sa, sb = torch.sign(a[:, None] - a[None, :]), torch.sign(b[:, None] - b[None, :])
    return ((sa * sb).sum() / torch.sqrt(sa.abs().sum() * sb.abs().sum())).item()


def test_kendall_tau_known_cases_and_definition():
    a = torch.rand(5, 1, 4, 4)
    assert metrics.kendall_tau(a, a) == pytest.approx(1.0, abs=1e-15)
    rev = a.flatten(1).sort(1).values
    assert metrics.kendall_tau(rev, rev.flip(1)) == pytest.approx(-1.0, abs=1e-15)
    # against tau-b from its pair definition (ties handled) on maps with many ties, signed and absolute ranking
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-3, 4, (6, 1, 5, 5), generator=g).double()
    y = torch.randint(-3, 4, (6, 1, 5, 5), generator=g).double()
    for absolute in (False, True):
        xs, ys = (x.abs(), y.abs()) if absolute else (x, y)
        ref = [_tau_b_by_pairs(xs[i].flatten(), ys[i].flatten()) for i in range(6)]
        got = metrics.kendall_tau_per_sample(x, y, absolute=absolute)
        torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)
        assert metrics.kendall_tau(x, y, absolute=absolute) == pytest.approx(sum(ref) / 6, abs=1e-12)
    const = torch.ones(2, 1, 2, 2)
    assert math.isnan(metrics.kendall_tau(const, torch.rand(2, 1, 2, 2)))


class LogSoftmaxNet(torch.nn.Module):
    """Nonlinear net whose logits are log-softmax normalised: logsumexp(logits) = 0 for every input."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(),
                                       torch.nn.Linear(8, 3)).double()

    def forward(self, x):
        return torch.log_softmax(self.net(x), dim=1)


@pytest.mark.parametrize("kind", ["random", "adversarial"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_density_shift_zero_for_constant_logsumexp(kind, norm):
    x = torch.rand(10, 1, 4, 4, dtype=torch.float64)
    # logsumexp of log-softmax is 0 up to float64 rounding
    assert metrics.density_shift(LogSoftmaxNet(), x, eps=0.5, kind=kind, norm=norm, steps=5) < 1e-14


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_density_shift_adversarial_linear_exact(norm):
    # one logit: E(x) = w . x + b, so max_{||d|| <= eps} |w . d| = eps ||w||_2 (l2) or eps ||w||_1 (linf)
    w = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)
    x = torch.rand(6, 1, 2, 2, dtype=torch.float64)
    expected = 0.3 * (w.norm() if norm == "l2" else w.abs().sum()).item()
    got = metrics.density_shift(linear_model(w, b=1.0), x, eps=0.3, kind="adversarial", norm=norm, steps=4)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_density_shift_random_linear_expectation(norm):
    # E |w . delta|: l2, delta uniform on the radius-eps sphere in d = 4: eps ||w|| E|u_1|, with
    # E|u_1| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)); linf: mean over the 16 vertices of eps |w . s|
    w = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)
    eps, n = 0.2, 20000
    if norm == "l2":
        expected = eps * w.norm().item() * math.gamma(2) / (math.sqrt(math.pi) * math.gamma(2.5))
        bound = eps * w.norm().item()
    else:
        verts = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=torch.float64)
        expected = eps * (verts @ w).abs().mean().item()
        bound = eps * w.abs().sum().item()
    x = torch.rand(n, 1, 2, 2, dtype=torch.float64)
    got = metrics.density_shift(linear_model(w), x, eps=eps, kind="random", norm=norm, seed=0)
    # |w . delta| is in [0, bound]; its sd is at most bound / 2, so 5 sd of the mean is 2.5 bound / sqrt(n)
    assert abs(got - expected) < 2.5 * bound / math.sqrt(n)
    assert got < metrics.density_shift(linear_model(w), x[:100], eps=eps, kind="adversarial", norm=norm)


def test_density_shift_bad_input():
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="kind"):
        metrics.density_shift(LogSoftmaxNet(), x, eps=0.1, kind="gaussian")
    with pytest.raises(ValueError, match="norm"):
        metrics.density_shift(LogSoftmaxNet(), x, eps=0.1, norm="l1")


def test_insertion_target_forms():
    model = linear_model([3.0, 2.0, 1.0, 0.0])
    x = torch.ones(2, 1, 1, 4, dtype=torch.float64)
    attr = torch.rand(2, 1, 1, 4, dtype=torch.float64)
    a = metrics.insertion_auc(model, x, attr, 0, steps=4)
    assert a == metrics.insertion_auc(model, x, attr, torch.tensor([0, 0]), steps=4)
    with pytest.raises(ValueError, match="target"):
        metrics.insertion_auc(model, x, attr, torch.tensor([0, 0, 0]), steps=4)


def test_spearman_and_cosine_against_scipy_and_by_hand():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-3, 4, (5, 1, 4, 6), generator=g).double()  # many ties
    y = x + 0.7 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    for absolute in (False, True):
        xs, ys = (x.abs(), y.abs()) if absolute else (x, y)
        ref = [scipy.stats.spearmanr(xs[i].flatten().numpy(), ys[i].flatten().numpy()).statistic for i in range(5)]
        torch.testing.assert_close(metrics.spearman_per_sample(x, y, absolute=absolute),
                                   torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)
        cos = [(xs[i].flatten() @ ys[i].flatten() / (xs[i].norm() * ys[i].norm())).item() for i in range(5)]
        torch.testing.assert_close(metrics.cosine_per_sample(x, y, absolute=absolute),
                                   torch.tensor(cos, dtype=torch.float64), rtol=0, atol=1e-12)
    # cosine barely moves when a diffuse map's small pixels are reshuffled; rank statistics do
    big = torch.zeros(1, 1, 1, 100, dtype=torch.float64)
    big[..., :5] = 10.0
    small = 0.01 * torch.rand(1, 1, 1, 100, generator=g, dtype=torch.float64)
    a, b = big + small, big + small.flip(-1)
    assert metrics.cosine_per_sample(a, b).item() > 0.999
    assert metrics.spearman_per_sample(a, b).item() < 0.5
    assert math.isnan(metrics.cosine_per_sample(torch.zeros(1, 1, 2, 2), torch.rand(1, 1, 2, 2)).item())


def test_topk_mass():
    a = torch.tensor([[[[4.0, -4.0, 1.0, 1.0]]], [[[1.0, 1.0, 1.0, 1.0]]]])
    assert metrics.topk_mass(a, 2) == pytest.approx((0.8 + 0.5) / 2)
    with pytest.raises(ValueError, match="k must be"):
        metrics.topk_mass(a, 5)
