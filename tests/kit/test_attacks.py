"""PGD against the analytic optimum of a linear binary model, and the attribution attack on a small
trained ReLU CNN."""
import pytest
import torch

from margreg_fast.kit import metrics
from margreg_fast.kit.attacks import PGD, AttributionAttack, attribution_robustness
from margreg_fast.kit.attribution import attribute
from margreg_fast.kit.data import load_digits_images


class LinearBinary(torch.nn.Module):
    """Logits (-s/2, s/2) with s = w . x + b: class 1 iff s > 0, margin |s|, CE gradient along -+w."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([-s / 2, s / 2], dim=1)


@pytest.fixture
def binary():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    # pixels inside [0.3, 0.7], so eps <= 0.3 perturbations never meet the [0, 1] box
    x = 0.3 + 0.4 * torch.rand(400, 1, 4, 4, generator=g, dtype=torch.float64)
    model = LinearBinary(w, b=-(0.5 * w.sum()).item())
    s = x.flatten(1) @ w + model.b
    return model, x, (s > 0).long(), s, w


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_linear_analytic_optimum(binary, norm):
    model, x, y, s, w = binary
    eps = 0.1 if norm == "linf" else 0.3
    # optimum: delta* = -(2y - 1) eps sign(w) (linf) or -(2y - 1) eps w / ||w||_2 (l2), margin cut eps ||w||_*
    direction = torch.sign(w) if norm == "linf" else w / w.norm()
    dual = w.abs().sum() if norm == "linf" else w.norm()
    optimum = -(2 * y - 1)[:, None].double() * eps * direction
    # linf from a random start: each pixel moves alpha a step in a fixed direction and sticks at the bound
    # after 2 eps / alpha steps; l2 without a random start reaches the sphere in one step (alpha >= eps)
    attack = PGD(model, eps=eps, alpha=eps / 4 if norm == "linf" else eps, steps=12, norm=norm,
                 random_start=(norm == "linf"), seed=0)
    adv = attack(x, y)
    # only rounding of x + delta and delta = adv - x (a few ulps of 1) separates adv from the optimum
    torch.testing.assert_close((adv - x).flatten(1), optimum, rtol=0, atol=1e-15)
    survives = metrics.predict_logits(model, adv).argmax(1) == y
    assert (s.abs() - eps * dual).abs().min() > 1e-9  # no sample sits on the threshold
    assert torch.equal(survives, s.abs() > eps * dual)
    assert 0 < survives.sum() < len(y)  # the case is not degenerate


def test_pgd_l2_random_start_converges(binary):
    model, x, y, s, w = binary
    eps = 0.3
    adv = PGD(model, eps=eps, alpha=eps / 5, steps=60, norm="l2", random_start=True, seed=1)(x, y)
    delta = (adv - x).flatten(1)
    assert torch.all(delta.norm(dim=1) <= eps * (1 + 1e-12))
    cut = -(2 * y - 1).double() * (delta @ w)  # margin reduction achieved, at most eps ||w||_2
    # each projection shrinks the random start's component off the optimum; after 60 steps the cut is
    # within 1e-6 of the optimum (measured ~1e-9; the bound is the Cauchy-Schwarz maximum)
    assert torch.all(cut <= eps * w.norm() * (1 + 1e-12)) and torch.all(cut >= eps * w.norm() * (1 - 1e-6))


@pytest.fixture(scope="module")
def trained_cnn():
    """A small ReLU CNN trained for a few seconds on the embedded digits (~90% test accuracy)."""
    torch.manual_seed(0)
    x, y = load_digits_images()
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(4):
        perm = torch.randperm(1500)
        for i in range(0, 1500, 50):
            idx = perm[i:i + 50]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return net, x[1500:1700], y[1500:1700]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_cnn_constraints_and_effect(trained_cnn, norm, eps):
    net, x, y = trained_cnn
    attack = PGD(net, eps=eps, alpha=2.5 * eps / 5, steps=5, norm=norm, seed=3)
    adv = attack(x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert torch.all(size <= eps * (1 + 1e-6))  # float32 rounding of x + delta
    clean = metrics.accuracy(net, x, y)
    assert clean > 0.8 and metrics.accuracy(net, adv, y) < clean - 0.2
    # same seed, other batching: same random start, same attack (up to float32 rounding of the
    # batched convolutions, which can flip a linf sign where a gradient entry is ~0)
    again = PGD(net, eps=eps, alpha=2.5 * eps / 5, steps=5, norm=norm, seed=3, batch_size=64)(x, y)
    assert ((again - adv).abs() > 1e-5).float().mean() < 0.01


def test_attribution_attack_beats_random_noise_and_keeps_labels(trained_cnn):
    net, x, y = trained_cnn
    eps, k = 0.1, 16
    adv = AttributionAttack(net, eps=eps, alpha=2.5 * eps / 10, steps=10, k=k)(x, y)
    assert adv.min() >= 0 and adv.max() <= 1 and (adv - x).abs().max() <= eps * (1 + 1e-6)
    pred = metrics.predict_logits(net, x).argmax(1)
    assert torch.equal(metrics.predict_logits(net, adv).argmax(1), pred)  # label unchanged, every sample
    noise = (x + eps * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)
    s0, s_adv, s_noise = (attribute(net, z, y, method="saliency") for z in (x, adv, noise))
    attacked = metrics.topk_intersection(s0, s_adv, k)
    random = metrics.topk_intersection(s0, s_noise, k)
    # measured ~0.79 vs ~0.90 on this model; the margin of 0.05 is a fraction of that gap
    assert attacked < random - 0.05
    assert metrics.kendall_tau(s0, s_adv) < metrics.kendall_tau(s0, s_noise)
    rob = attribution_robustness(net, x, y, eps=eps, k=k, steps=10, noise_seed=0)
    assert rob["topk_intersection"] == pytest.approx(attacked, abs=1e-12)
    assert rob["kendall_tau"] == pytest.approx(metrics.kendall_tau(s0, s_adv), abs=1e-12)
    assert rob["cosine"] == pytest.approx(metrics.cosine_per_sample(s0, s_adv).mean().item(), abs=1e-12)
    assert rob["topk_mass"] == pytest.approx(metrics.topk_mass(s0, k), abs=1e-12)
    # the baseline: the same +-eps vertex noise as above (same seed), scored by the same measures
    assert rob["topk_intersection_random"] == pytest.approx(random, abs=1e-12)
    assert rob["spearman_random"] > rob["spearman"] and rob["cosine_random"] > rob["cosine"]


def test_mass_gradient_matches_double_backprop_on_smooth_model():
    # on a smooth (tanh) net the finite-difference Hessian-vector product gives the sign of the exact
    # gradient of the top-k saliency share, computed here by double backprop in float64
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.Tanh(),
                              torch.nn.Linear(12, 3)).double()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0, 1])
    attack = AttributionAttack(net, eps=0.1, alpha=0.01, steps=1, k=4, fd_step=1e-5)
    g, = torch.autograd.grad(net(x).gather(1, y[:, None]).sum(), x, create_graph=True)
    mask = attack._topk_mask(g.detach())
    a = g.abs().flatten(1)
    exact, = torch.autograd.grad(((a * mask).sum(1) / a.sum(1)).sum(), x)
    got = attack.mass_gradient_direction(x.detach(), y, g.detach(), mask)
    # compare where the exact gradient is not within FD error (O(h^2) relative) of zero
    big = exact.abs() > 1e-6 * exact.abs().amax()
    assert torch.equal(got[big], torch.sign(exact)[big])


def test_attack_argument_errors(trained_cnn):
    net, x, y = trained_cnn
    with pytest.raises(ValueError, match="norm"):
        PGD(net, eps=0.1, alpha=0.01, steps=1, norm="l1")
    with pytest.raises(ValueError, match="saliency"):
        AttributionAttack(net, eps=0.1, alpha=0.01, steps=1, k=4, method="integrated_gradients")
    with pytest.raises(ValueError, match="labels"):
        PGD(net, eps=0.1, alpha=0.01, steps=1)(x, y[:-1])
    with pytest.raises(ValueError, match="k=100"):
        AttributionAttack(net, eps=0.1, alpha=0.01, steps=1, k=100)(x, y)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_pgd_accepts_the_label_dtypes_the_regulariser_accepts(binary, dtype):
    model, x, y, _, _ = binary
    attack = PGD(model, eps=0.1, alpha=0.05, steps=3, seed=0)
    torch.testing.assert_close(attack(x, y.to(dtype)), attack(x, y), rtol=0, atol=0)


def test_attacks_reject_float_labels(binary):
    model, x, y, _, _ = binary
    for attack in (PGD(model, eps=0.1, alpha=0.05, steps=1),
                   AttributionAttack(model, eps=0.1, alpha=0.05, steps=1, k=2)):
        with pytest.raises(TypeError, match="labels must hold integer class indices, got dtype torch.float32"):
            attack(x, y.float())
        with pytest.raises(ValueError, match=r"labels must hold one label per sample, shape \(400,\)"):
            attack(x, y[:3])
