"""Adversarial attacks on pixels (PGD) and on input-gradient attributions (Ghorbani et al. 2019).

Conventions follow torchattacks: ``attack = PGD(model, eps=..., alpha=..., steps=...)``,
``adv = attack(images, labels)`` with images in [0, 1]; the model runs in eval mode.
"""
from __future__ import annotations

import torch

from .metrics import (cosine_per_sample, evaluating, kendall_tau, nanmean, project, random_perturbation,
                      spearman_per_sample, steepest_direction, topk_intersection, topk_mass)
from .validation import check_batch_labels

_NORMS = ("linf", "l2")


def _check_attack_args(eps: float, alpha: float, steps: int, norm: str) -> None:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if eps < 0 or alpha < 0 or steps < 0:
        raise ValueError(f"need eps, alpha, steps >= 0, got eps={eps}, alpha={alpha}, steps={steps}")


def _check_batch(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate the batch as the regulariser does (any integer label dtype); returns int64 labels."""
    if not torch.is_tensor(images) or not images.is_floating_point() or images.dim() < 2:
        raise TypeError("images must be a floating-point tensor (N, ...)")
    return check_batch_labels(labels, images, name="labels")


def pgd_ascent(loss, x: torch.Tensor, start: torch.Tensor, *, eps: float, alpha: float, steps: int,
               norm: str = "linf") -> torch.Tensor:
    """``steps`` steps of projected gradient ascent on ``loss(adv)`` (a scalar, summed over samples so that
    each sample's step depends on its own gradient only) from ``start``: adv <- adv + alpha * the steepest
    ``norm`` direction of the gradient, then projected onto the eps-ball around ``x`` and onto [0, 1].
    PGD ascends the cross-entropy with it, TRADES (kit/adversarial.py) the KL divergence to the clean
    prediction."""
    adv = start
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        grad, = torch.autograd.grad(loss(adv), adv)
        adv = adv.detach() + alpha * steepest_direction(grad, norm)
        adv = (x + project(adv - x, eps, norm)).clamp(0, 1)
    return adv.detach()


class PGD:
    """Projected gradient descent on the cross-entropy (Madry et al. 2018), L-inf or L2 ball of radius eps.

    Each step moves by ``alpha`` along sign(grad) (linf) or grad / ||grad||_2 (l2), then projects onto
    the eps-ball around the clean image and onto [0, 1]. ``random_start`` begins from a uniform point
    of the L-inf ball, or (l2) a random direction at a uniform radius in [0, eps], as torchattacks does.
    ``seed`` makes the random start reproducible without touching the global RNG.
    """

    def __init__(self, model: torch.nn.Module, *, eps: float, alpha: float, steps: int, norm: str = "linf",
                 random_start: bool = True, seed: int | None = None, batch_size: int = 512):
        _check_attack_args(eps, alpha, steps, norm)
        self.model, self.eps, self.alpha, self.steps, self.norm = model, eps, alpha, steps, norm
        self.random_start, self.seed, self.batch_size = random_start, seed, batch_size

    def _start(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        if self.norm == "linf":
            delta = (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype, device=x.device) - 1) * self.eps
        else:
            radius = torch.rand(x.shape[0], generator=gen, dtype=x.dtype, device=x.device) * self.eps
            delta = steepest_direction(torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device), "l2")
            delta = delta * radius.view(-1, *([1] * (x.dim() - 1)))
        return (x + delta).clamp(0, 1)

    def _attack_batch(self, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        # summed loss: each sample's step depends only on its own gradient's direction
        return pgd_ascent(lambda adv: torch.nn.functional.cross_entropy(self.model(adv), y, reduction="sum"), x, start,
                          eps=self.eps, alpha=self.alpha, steps=self.steps, norm=self.norm)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial images, same shape as ``images``, in [0, 1] and within eps of them."""
        labels = _check_batch(images, labels)
        gen = None if self.seed is None else torch.Generator(device=images.device).manual_seed(self.seed)
        images = images.detach()
        start = self._start(images, gen)  # drawn for all images at once: independent of batch_size
        with evaluating(self.model):
            return torch.cat([self._attack_batch(images[i:i + self.batch_size], labels[i:i + self.batch_size],
                                                 start[i:i + self.batch_size])
                              for i in range(0, images.shape[0], self.batch_size)])


def _saliency(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    """(logits, d z_target / d x) for a batch, first-order autograd only."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grad, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    return logits.detach(), grad


class AttributionAttack:
    """Top-k attribution attack (Ghorbani, Abid and Zou, AAAI 2019) on the saliency map, L-inf ball.

    With g(x) = d z_y / d x and K the k pixels of largest |g(x_clean)|, each step lowers the share of
    saliency mass on K,  f(x') = sum_K |g(x')| / sum |g(x')|,  by x' <- x' - alpha sign(grad f), then
    projects onto the eps-ball around the clean image and onto [0, 1]. The returned image is the iterate
    with the fewest of K left in its own top-k among those whose predicted class equals the clean
    prediction (the clean image itself if no iterate qualifies), so the label is never changed.

    grad f = H v with H the Hessian of z_y and v = sign(g) (1_K - f) / sum |g|. Double backprop gives
    H = 0 almost everywhere for ReLU networks (and fails for ops without a double backward), so H v
    is taken by a central finite difference of first-order gradients along u = v / ||v||_2:
    (g(x' + h u) - g(x' - h u)) / 2h, only its sign being used, with h = fd_step * sqrt(d) so that
    fd_step is the RMS displacement per pixel (d pixels). A finite h sees the kinks of a ReLU network
    within that distance, which plays the role of Ghorbani et al.'s softplus substitute. Measured on the
    small ReLU CNN of tests/test_attacks.py (200 digits, eps=0.1, k=16, 10 steps): top-k intersection
    0.787 with fd_step=0.03 vs 0.788 for a softplus(beta=10) double-backprop attack and 0.893 for
    random +-eps noise; fd_step=0.005 is too small to see the kinks (0.896).
    """

    def __init__(self, model: torch.nn.Module, *, eps: float, alpha: float, steps: int, k: int,
                 method: str = "saliency", fd_step: float = 0.03, batch_size: int = 512):
        _check_attack_args(eps, alpha, steps, "linf")
        if method != "saliency":
            raise ValueError(f"AttributionAttack supports method='saliency' only, got {method!r}")
        if k < 1 or not fd_step > 0:
            raise ValueError(f"need k >= 1 and fd_step > 0, got k={k}, fd_step={fd_step}")
        self.model, self.eps, self.alpha, self.steps, self.k = model, eps, alpha, steps, k
        self.fd_step, self.batch_size = fd_step, batch_size

    def _topk_mask(self, g: torch.Tensor) -> torch.Tensor:
        flat = g.abs().flatten(1)
        return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(self.k, dim=1).indices, True)

    def mass_gradient_direction(self, adv: torch.Tensor, y: torch.Tensor, g: torch.Tensor,
                                mask: torch.Tensor) -> torch.Tensor:
        """sign(grad f) at ``adv`` (saliency g there, top-k set ``mask`` (N, d)) by the finite-difference
        Hessian-vector product described in the class docstring."""
        a = g.abs().flatten(1)
        total = a.sum(1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        share = (a * mask).sum(1, keepdim=True) / total
        v = (torch.sign(g.flatten(1)) * (mask.to(a.dtype) - share) / total).view_as(g)
        u = self.fd_step * g[0].numel() ** 0.5 * steepest_direction(v, "l2")
        return torch.sign(_saliency(self.model, adv + u, y)[1] - _saliency(self.model, adv - u, y)[1])

    def _attack_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, g = _saliency(self.model, x, y)
        if self.k > g[0].numel():
            raise ValueError(f"k={self.k} exceeds the {g[0].numel()} features per image")
        pred0, mask = logits.argmax(1), self._topk_mask(g)
        best, best_kept = x.clone(), torch.full((x.shape[0],), self.k + 1, device=x.device)
        adv = x.clone()
        for step in range(self.steps + 1):
            if step > 0:
                logits, g = _saliency(self.model, adv, y)
                kept = (self._topk_mask(g) & mask).sum(1)
                better = (logits.argmax(1) == pred0) & (kept < best_kept)
                best[better], best_kept[better] = adv[better], kept[better]
            if step == self.steps:
                break
            adv = adv - self.alpha * self.mass_gradient_direction(adv, y, g, mask)
            adv = (x + project(adv - x, self.eps, "linf")).clamp(0, 1)
        return best

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Perturbed images within eps (L-inf) of ``images``, in [0, 1], with unchanged predicted class."""
        labels = _check_batch(images, labels)
        with evaluating(self.model):
            return torch.cat([self._attack_batch(images[i:i + self.batch_size].detach(),
                                                 labels[i:i + self.batch_size])
                              for i in range(0, images.shape[0], self.batch_size)])


#: Similarities of two saliency maps reported by attribution_robustness (pixels ranked or weighted by
#: |saliency|; 1 = unchanged): top-k intersection and Kendall tau (Ghorbani et al.), Spearman over all
#: pixels, and the cosine of the |saliency| maps (a magnitude-weighted similarity that a diffuse map's
#: reshuffled small pixels barely move).
SIMILARITIES = ("topk_intersection", "kendall_tau", "spearman", "cosine")


def attribution_similarity(before: torch.Tensor, after: torch.Tensor, k: int,
                           wide_k: int | None = None) -> dict[str, float]:
    """Every measure of SIMILARITIES between two batches of maps, each a mean over samples; with
    ``wide_k`` also ``topk_intersection_wide``, the top-k intersection at k = wide_k."""
    out = {"topk_intersection": topk_intersection(before, after, k), "kendall_tau": kendall_tau(before, after),
           "spearman": nanmean(spearman_per_sample(before, after)), "cosine": nanmean(cosine_per_sample(before, after))}
    if wide_k is not None:
        out["topk_intersection_wide"] = topk_intersection(before, after, wide_k)
    return out


def attacked_maps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, k: int, steps: int,
                  alpha: float | None = None, fd_step: float = 0.03, noise_seed: int | None = None,
                  batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(before, after, noisy): the saliency maps of x, of AttributionAttack(x) (alpha defaults to
    2.5 eps / steps) and, with ``noise_seed``, of x plus random +-eps noise (a uniformly random vertex of
    the L-inf ball, clipped to [0, 1]; else None)."""
    alpha = 2.5 * eps / max(steps, 1) if alpha is None else alpha
    attack = AttributionAttack(model, eps=eps, alpha=alpha, steps=steps, k=k, fd_step=fd_step, batch_size=batch_size)
    adv = attack(x, y)
    with evaluating(model):
        before, after = _saliency(model, x, y)[1], _saliency(model, adv, y)[1]
        noisy = None
        if noise_seed is not None:
            gen = torch.Generator(device=x.device).manual_seed(noise_seed)
            noisy = _saliency(model, (x + random_perturbation(x, eps, "linf", gen)).clamp(0, 1), y)[1]
    return before, after, noisy


def attribution_robustness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, k: int,
                           steps: int, alpha: float | None = None, fd_step: float = 0.03,
                           noise_seed: int | None = None, wide_k: int | None = None,
                           batch_size: int = 512) -> dict[str, float]:
    """SIMILARITIES between the saliency maps of x and of AttributionAttack(x) (higher is more robust;
    alpha defaults to 2.5 eps / steps; with ``wide_k`` also the top-k intersection at that k), and two
    properties of the clean maps: ``topk_mass``, the share of their |saliency| in the top k (how
    concentrated they are), and ``saliency_l2``, their mean L2 norm (the model's input-gradient scale).
    With ``noise_seed``, also the similarities under random
    +-eps noise (a uniformly random vertex of the L-inf ball, clipped to [0, 1]), keys ending in
    ``_random``: what any perturbation of that size does, the baseline the attack is read against."""
    before, after, noisy = attacked_maps(model, x, y, eps=eps, k=k, steps=steps, alpha=alpha, fd_step=fd_step,
                                         noise_seed=noise_seed, batch_size=batch_size)
    out = {**attribution_similarity(before, after, k, wide_k), "topk_mass": topk_mass(before, k),
           "saliency_l2": before.flatten(1).double().norm(dim=1).mean().item()}
    if noisy is not None:
        out.update({f"{name}_random": v for name, v in attribution_similarity(before, noisy, k, wide_k).items()})
    return out
