"""Adversarial training objectives: PGD adversarial training and TRADES, the alternatives to the penalty.

Both are called like the library's regulariser, ``loss, stats = objective(model, x, y)``, so the kit
trains them through the same loop (experiments/training.py). Images lie in [0, 1] (kit/data/types.py);
every adversarial image is kept in the L-inf ball of radius ``eps`` around its clean image and in [0, 1].

- ``PGDTraining`` (Madry et al. 2018): loss = CE(f(x_adv), y), x_adv from kit/attacks.PGD on the
  cross-entropy: a uniform random start in the eps-ball, ``steps`` signed-gradient steps of size
  ``alpha`` (default 2.5 eps / steps, Madry et al.'s choice, which lets the iterate cross the ball).
- ``TRADES`` (Zhang et al. 2019): loss = CE(f(x), y) + beta * KL(p(x) || p(x_adv)), the KL summed over
  classes and averaged over the batch, x_adv maximising that KL by projected signed-gradient ascent
  (attacks.pgd_ascent) from x + 0.001 N(0, I) (the paper's start), the clean p(x) held fixed during the
  attack; beta = 6 is the paper's trade-off for MNIST-scale models. In the loss the gradient flows through
  both p(x) and p(x_adv), as in the reference implementation.

The attack runs with the model in eval mode (metrics.evaluating), the loss in the caller's mode (train
mode during training), as the TRADES reference code does: the attack is then the evaluation's adversary
(the claims' PGD row attacks in eval mode too), and with BatchNorm the attack's iterates neither move
the running statistics nor depend on the other images of the batch. PaperCNN has no BatchNorm or
dropout, so on the claims' model both modes give the same attack. Random starts draw from torch's
global generator, which the kit's checkpoints keep, so a resumed run repeats them.

``stats``: "ce", the cross-entropy the scheme trains on (adversarial for PGD-AT, clean for TRADES), and
"penalty", TRADES's KL term (0 for PGD-AT), as detached tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attacks import PGD, pgd_ascent
from .metrics import evaluating
from .trades_beta import TRADES_BETA

#: TRADES's random start: x + START_STD * N(0, I) (Zhang et al.'s reference code).
TRADES_START_STD = 0.001


def default_alpha(eps: float, steps: int) -> float:
    """The step size 2.5 eps / steps of Madry et al. (and of the kit's PGD evaluation)."""
    return 2.5 * eps / max(steps, 1)


def _check(eps: float, steps: int) -> None:
    if not eps >= 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")


class PGDTraining:
    """CE on the PGD adversarial batch (module docstring); ``adversarial_batch`` is the batch it trains on."""

    def __init__(self, *, eps: float, steps: int, alpha: float | None = None):
        _check(eps, steps)
        self.eps, self.steps = eps, steps
        self.alpha = default_alpha(eps, steps) if alpha is None else alpha

    def adversarial_batch(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return PGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, norm="linf", random_start=True,
                   batch_size=max(x.shape[0], 1))(x, y)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        ce = F.cross_entropy(model(self.adversarial_batch(model, x, y)), y)
        return ce, {"ce": ce.detach(), "penalty": torch.zeros((), dtype=ce.dtype)}


def trades_kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x_adv)) summed over classes, per sample (N,): sum_c p_c (log p_c - log q_c)."""
    log_p, log_q = F.log_softmax(clean_logits, dim=1), F.log_softmax(adv_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


class TRADES:
    """CE(f(x), y) + beta KL(p(x) || p(x_adv)) (module docstring); ``adversarial_batch`` is its x_adv."""

    def __init__(self, *, eps: float, steps: int, beta: float = TRADES_BETA, alpha: float | None = None):
        _check(eps, steps)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.eps, self.steps, self.beta = eps, steps, beta
        self.alpha = default_alpha(eps, steps) if alpha is None else alpha

    def adversarial_batch(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        with evaluating(model):
            with torch.no_grad():
                clean = model(x)
            start = (x + TRADES_START_STD * torch.randn_like(x)).clamp(0, 1)
            return pgd_ascent(lambda adv: trades_kl(clean, model(adv)).sum(), x, start, eps=self.eps,
                              alpha=self.alpha, steps=self.steps, norm="linf")

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        adv = self.adversarial_batch(model, x)
        clean_logits = model(x)
        ce = F.cross_entropy(clean_logits, y)
        kl = trades_kl(clean_logits, model(adv)).mean()
        return ce + self.beta * kl, {"ce": ce.detach(), "penalty": kl.detach()}
