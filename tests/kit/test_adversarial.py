"""The adversarial-training objectives (kit/adversarial.py): TRADES's loss against its definition computed
independently in float64 NumPy, PGD-AT's training batch as the attack's output, and the shared ascent."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from margreg_fast.kit.adversarial import TRADES, PGDTraining, default_alpha, trades_kl
from margreg_fast.kit.attacks import PGD
from margreg_fast.kit.data import load_digits_images
from margreg_fast.kit.models import SmallCNN

EPS = 0.1


@pytest.fixture(scope="module")
def trained():
    """A SmallCNN trained for 10 epochs of Adam on 1,000 real 8x8 digits (float32), and 64 held-out digits."""
    x, y = load_digits_images()
    torch.manual_seed(0)
    model = SmallCNN(width=8, image_size=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        for idx in torch.randperm(1000, generator=torch.Generator().manual_seed(1)).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model, x[1000:1064], y[1000:1064]


def _log_softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_trades_loss_is_its_definition_in_float64(trained):
    """CE(f(x), y) + beta * mean_i sum_c p_c(x_i) (log p_c(x_i) - log p_c(x_adv_i)), from the logits in
    NumPy float64, at the x_adv the objective trains on (same global seed). Both sides are float64 sums
    of 64 x 10 terms of size O(1): they agree to rounding, 1e-12 relative is ~1e4 ulps of slack."""
    model, x, y = trained
    model = model.double()
    x = x.double()
    objective = TRADES(eps=EPS, steps=5, beta=6.0)
    torch.manual_seed(3)
    loss, stats = objective(model, x, y)
    torch.manual_seed(3)
    adv = objective.adversarial_batch(model, x)
    with torch.no_grad():
        z, z_adv = model(x).numpy(), model(adv).numpy()
    log_p, log_q = _log_softmax_np(z), _log_softmax_np(z_adv)
    ce = -log_p[np.arange(len(y)), y.numpy()].mean()
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean()
    assert kl > 1e-3  # the attack moved the prediction: the KL term is not trivially zero
    np.testing.assert_allclose(loss.item(), ce + 6.0 * kl, rtol=1e-12)
    np.testing.assert_allclose([stats["ce"].item(), stats["penalty"].item()], [ce, kl], rtol=1e-12)
    model.float()


def test_trades_attack_raises_the_kl_within_the_ball(trained):
    """x_adv lies within eps of x and in [0, 1], and its KL to the clean prediction exceeds that of the
    paper's random start (x + 0.001 N(0, I)) and of random +-eps noise: the ascent maximises the KL."""
    model, x, y = trained
    objective = TRADES(eps=EPS, steps=5)
    torch.manual_seed(4)
    adv = objective.adversarial_batch(model, x)
    assert (adv - x).abs().max() <= EPS + 1e-6  # float32: x + delta rounds by <= 1 ulp of 1.0 (1.2e-7)
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean = model(x)
        noise = (x + EPS * torch.sign(torch.randn_like(x))).clamp(0, 1)
        kl_adv, kl_noise = trades_kl(clean, model(adv)).mean(), trades_kl(clean, model(noise)).mean()
        kl_start = trades_kl(clean, model((x + 0.001 * torch.randn_like(x)).clamp(0, 1))).mean()
    assert kl_adv > 5 * kl_noise and kl_adv > 100 * kl_start


def test_pgd_at_trains_on_the_attack_output(trained):
    """The loss PGD-AT returns is the CE on the kit's PGD output (same global seed, bit for bit); that batch
    lies within eps (L-inf) of x and in [0, 1], and its CE is at least the clean CE (here far above it)."""
    model, x, y = trained
    objective = PGDTraining(eps=EPS, steps=7)
    assert objective.alpha == pytest.approx(2.5 * EPS / 7) == default_alpha(EPS, 7)
    torch.manual_seed(5)
    loss, stats = objective(model, x, y)
    torch.manual_seed(5)
    adv = objective.adversarial_batch(model, x, y)
    torch.manual_seed(5)
    reference = PGD(model, eps=EPS, alpha=2.5 * EPS / 7, steps=7, random_start=True)(x, y)
    assert torch.equal(adv, reference)
    assert torch.equal(loss.detach(), F.cross_entropy(model(adv), y).detach()) and torch.equal(stats["ce"], loss.detach())
    assert (adv - x).abs().max() <= EPS + 1e-6  # float32 rounding of x + delta, as above
    assert adv.min() >= 0 and adv.max() <= 1
    clean = F.cross_entropy(model(x), y)
    assert loss > clean and loss > 2 * clean
    loss.backward()  # the gradient reaches the weights through the adversarial forward
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_pgd_keeps_its_numbers_through_the_shared_ascent(trained):
    """PGD (now on attacks.pgd_ascent) equals the loop written out: random start, signed steps, projection."""
    model, x, y = trained
    gen = torch.Generator().manual_seed(7)
    adv = (x + (2 * torch.rand(x.shape, generator=gen) - 1) * EPS).clamp(0, 1)
    model.eval()
    for _ in range(4):
        adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(adv), y, reduction="sum"), adv)
        adv = (x + (adv.detach() + 0.03 * grad.sign() - x).clamp(-EPS, EPS)).clamp(0, 1)
    model.train()
    assert torch.equal(PGD(model, eps=EPS, alpha=0.03, steps=4, seed=7)(x, y), adv)


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        PGDTraining(eps=-0.1, steps=7)
    with pytest.raises(ValueError):
        TRADES(eps=0.1, steps=0)
    with pytest.raises(ValueError):
        TRADES(eps=0.1, steps=7, beta=-1.0)
