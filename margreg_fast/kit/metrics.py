"""Evaluation metrics: accuracy, worst-group accuracy, feature leakage, the insertion game,
attribution similarity (top-k intersection, Kendall tau, Spearman, cosine) and density robustness.

All functions take images (N, 1, H, W) and models mapping them to logits (N, C); models are run in
eval mode (their mode is restored afterwards) and in batches of ``batch_size``.
"""
from __future__ import annotations

import contextlib
import warnings

import scipy.stats
import torch


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """Put ``model`` in eval mode for the block and restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, computed in batches, concatenated (N, C)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with evaluating(model):
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _check_pairs(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"{name}: expected two tensors of the same shape (N, ...), got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of samples whose argmax logit equals the label."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"accuracy: need matching non-empty x and y, got {x.shape[0]} and {y.shape[0]}")
    return (predict_logits(model, x, batch_size).argmax(1) == y).double().mean().item()


def group_accuracies(pred: torch.Tensor, y: torch.Tensor, group: torch.Tensor) -> dict[int, float]:
    """{group id: accuracy of ``pred`` against ``y`` within the group} over the groups present."""
    if not (pred.shape == y.shape == group.shape) or pred.dim() != 1:
        raise ValueError(f"pred, y and group must be 1-d of one length, got {tuple(pred.shape)}, "
                         f"{tuple(y.shape)}, {tuple(group.shape)}")
    correct = (pred == y).double()
    return {int(g): correct[group == g].mean().item() for g in group.unique()}


def worst_group_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, group: torch.Tensor,
                         batch_size: int = 512) -> float:
    """The lowest accuracy over the groups present in ``group`` (e.g. (label, patch) pairs)."""
    if x.shape[0] == 0:
        raise ValueError("worst_group_accuracy: empty input")
    pred = predict_logits(model, x, batch_size).argmax(1)
    return min(group_accuracies(pred, y, group).values())


def feature_leakage(attr: torch.Tensor, null_mask: torch.Tensor) -> float:
    """Mean over samples of sum |attr| on the null mask / sum |attr| (in [0, 1], lower is better).

    Samples whose attribution is identically zero carry no attribution and are left out of the mean;
    if every sample is such, the result is nan.
    """
    _check_pairs("feature_leakage", attr, null_mask)
    if null_mask.dtype != torch.bool:
        raise TypeError(f"null_mask must be bool, got {null_mask.dtype}")
    a = attr.detach().abs().flatten(1).double()
    total = a.sum(1)
    share = (a * null_mask.flatten(1)).sum(1) / total
    share = share[total > 0]
    return share.mean().item() if share.numel() else float("nan")


def _as_targets(target, n: int, device) -> torch.Tensor:
    """An int or (n,) tensor of classes as an (n,) int64 tensor."""
    target = torch.as_tensor(target, dtype=torch.int64, device=device)
    if target.dim() == 0:
        return target.expand(n)
    if target.shape != (n,):
        raise ValueError(f"target must be an int or have shape ({n},), got {tuple(target.shape)}")
    return target


def _target_logit(model, x, target, batch_size) -> torch.Tensor:
    return predict_logits(model, x, batch_size).gather(1, target[:, None].to(x.device)).squeeze(1)


def insertion_curve(model: torch.nn.Module, x: torch.Tensor, attr: torch.Tensor, target, *, steps: int = 16,
                    batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Insertion game: (fractions, curve), both (steps + 1,) float64.

    Pixels are inserted from ``x`` into the blank (all-zero) image in decreasing order of the signed
    attribution (stable order for ties); at fraction f the top round(f * d) pixels of each image are
    inserted (d pixels per image). With z(.) the target-class logit,

        curve(f) = mean_i [ z(x_i^(f)) - z(0) ] / mean_i [ z(x_i) - z(0) ]

    the fractional logit change relative to the full images, so curve(0) = 0 and curve(1) = 1
    (a ratio of means, which stays finite when one image's own logit change is near zero). The curve
    reads as intended when that mean change is positive, as for the true class of a trained model.
    """
    _check_pairs("insertion_curve", x, attr)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = x.shape[0]
    target = _as_targets(target, n, x.device)
    flat = x.detach().flatten(1)
    d = flat.shape[1]
    order = attr.detach().flatten(1).sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d).expand(n, d).contiguous())
    fractions = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    counts = torch.round(fractions * d).long()
    inserted = torch.stack([flat * (rank < k) for k in counts])  # (steps + 1, N, d)
    logits = _target_logit(model, inserted.reshape(-1, *x.shape[1:]), target.repeat(steps + 1), batch_size)
    logits = logits.double().reshape(steps + 1, n)
    blank = _target_logit(model, torch.zeros_like(x[:1]).expand_as(x), target, batch_size).double()
    change = (logits - blank).mean(1)
    return fractions, change / change[-1]


def insertion_auc(model: torch.nn.Module, x: torch.Tensor, attr: torch.Tensor, target, *, steps: int = 16,
                  batch_size: int = 512) -> float:
    """Trapezoid area under ``insertion_curve`` over fractions in [0, 1] (1 = all logit change at once;
    about 0.5 for a linear model and a random order; higher is better)."""
    return curve_area(*insertion_curve(model, x, attr, target, steps=steps, batch_size=batch_size))


def curve_area(fractions: torch.Tensor, curve: torch.Tensor) -> float:
    """Trapezoid area under an insertion curve (what :func:`insertion_auc` returns for it)."""
    return torch.trapezoid(curve, fractions).item()


def _ranking_maps(a: torch.Tensor, b: torch.Tensor, absolute: bool):
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).double()
    return (a.abs(), b.abs()) if absolute else (a, b)


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int, *, absolute: bool = True) -> float:
    """Mean over samples of |top-k(a_i) & top-k(b_i)| / k, pixels ranked by |value| (``absolute``)."""
    _check_pairs("topk_intersection", a, b)
    a, b = _ranking_maps(a, b, absolute)
    if not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must be in [1, {a.shape[1]}], got {k}")
    hits = torch.zeros_like(a, dtype=torch.int32)
    hits.scatter_add_(1, a.topk(k, dim=1).indices, torch.ones_like(a[:, :k], dtype=torch.int32))
    hits.scatter_add_(1, b.topk(k, dim=1).indices, torch.ones_like(b[:, :k], dtype=torch.int32))
    return ((hits == 2).sum(1).double() / k).mean().item()


def kendall_tau_per_sample(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Kendall's tau-b between flattened maps, per sample (N,) float64: scipy.stats.kendalltau (its
    default variant, O(d log d) per sample).

    tau_b = S / sqrt(P_a P_b), S = sum_{i<j} sign(a_i - a_j) sign(b_i - b_j), P_a (P_b) the number of
    pairs not tied in a (b). nan where a map is constant.
    """
    _check_pairs("kendall_tau", a, b)
    a, b = (t.numpy() for t in _ranking_maps(a, b, absolute))
    with warnings.catch_warnings():  # a constant map: scipy warns and returns nan, which the caller handles
        warnings.simplefilter("ignore")
        return torch.tensor([scipy.stats.kendalltau(a[i], b[i]).statistic for i in range(a.shape[0])],
                            dtype=torch.float64)


def spearman_per_sample(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Spearman's rank correlation over all pixels, per sample (N,) float64: the Pearson correlation of
    the two maps' ranks (ties get their average rank, as in scipy.stats.spearmanr); nan where a map is
    constant."""
    _check_pairs("spearman", a, b)
    a, b = (torch.from_numpy(scipy.stats.rankdata(t.numpy(), axis=1)) for t in _ranking_maps(a, b, absolute))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def cosine_per_sample(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Cosine similarity of the flattened maps (of |map| if ``absolute``), per sample (N,) float64; nan
    where a map is zero. Weighted by magnitude: reshuffling the many near-zero pixels of a diffuse map
    barely moves it, while it moves every rank statistic."""
    _check_pairs("cosine", a, b)
    a, b = _ranking_maps(a, b, absolute)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def nanmean(values: torch.Tensor) -> float:
    """Mean over the entries that are not nan; nan if all are."""
    values = values[~values.isnan()]
    return values.mean().item() if values.numel() else float("nan")


def topk_mass(a: torch.Tensor, k: int) -> float:
    """Mean over samples of the share of sum |a_i| held by the k largest |a_ij|: 1 for a map with at most
    k non-zero pixels, k / d for a flat one (how concentrated a map is)."""
    a = a.detach().flatten(1).double().abs()
    if not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must be in [1, {a.shape[1]}], got {k}")
    return nanmean(a.topk(k, dim=1).values.sum(1) / a.sum(1))


def kendall_tau(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = True) -> float:
    """Mean over samples of Kendall's tau-b between the flattened maps (ranked by |value| if ``absolute``);
    samples with a constant map (tau undefined) are left out; nan if all are."""
    return nanmean(kendall_tau_per_sample(a, b, absolute=absolute))


def _energy(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """E(x) = logsumexp_k f(x)_k = log p(x) + log Z."""
    return torch.logsumexp(model(x), dim=1)


def steepest_direction(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit ``norm`` for gradient v, per sample: sign(v) for linf,
    v / ||v||_2 for l2 (zero where v is zero)."""
    if norm == "linf":
        return torch.sign(v)
    n = v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / n.view(-1, *([1] * (v.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project each sample of ``delta`` onto the ``norm`` ball of radius eps."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1)
    scale = torch.where(n > eps, eps / n.clamp_min(torch.finfo(delta.dtype).tiny), torch.ones_like(n))
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def random_perturbation(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None):
    """A random delta of norm exactly eps per sample: uniform on the L2 sphere, or a uniformly random
    vertex (+-eps per pixel) of the L-inf ball."""
    g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return eps * steepest_direction(g, norm)


def density_shift(model: torch.nn.Module, x: torch.Tensor, *, eps: float, kind: str = "random", norm: str = "l2",
                  steps: int = 10, alpha: float | None = None, seed: int | None = None,
                  batch_size: int = 512) -> float:
    """Mean over samples of |E(x + delta) - E(x)|, E = logsumexp f (so the shift equals the change of
    log p(x); log Z cancels).

    kind="random": delta uniform on the ``norm`` sphere of radius eps (see random_perturbation).
    kind="adversarial": delta maximises |E(x + delta) - E(x)| over the ``norm`` ball of radius eps, by
    projected steepest ascent (``steps`` steps of size ``alpha``, default 2.5 eps / steps) run once
    upwards and once downwards from delta = 0, keeping per sample the larger shift.
    x + delta is not clipped to the image range: the density is defined on all of R^d, and clipping
    would change the perturbation's norm.
    """
    if kind not in ("random", "adversarial"):
        raise ValueError(f"kind must be 'random' or 'adversarial', got {kind!r}")
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if eps < 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    gen = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    shifts = []
    with evaluating(model):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].detach()
            with torch.no_grad():
                e0 = _energy(model, xb)
            if kind == "random":
                with torch.no_grad():
                    shift = (_energy(model, xb + random_perturbation(xb, eps, norm, gen)) - e0).abs()
            else:
                shift = torch.maximum(*(_ascend_energy(model, xb, e0, s, eps, norm, steps, alpha) for s in (1.0, -1.0)))
            shifts.append(shift.double())
    return torch.cat(shifts).mean().item()


def _ascend_energy(model, x, e0, sign, eps, norm, steps, alpha) -> torch.Tensor:
    """|E(x + delta) - E(x)| after projected steepest ascent on sign * E(x + delta), per sample."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        grad, = torch.autograd.grad(sign * _energy(model, x + delta).sum(), delta)
        delta = project(delta.detach() + alpha * steepest_direction(grad, norm), eps, norm)
    with torch.no_grad():
        return (_energy(model, x + delta) - e0).abs()
