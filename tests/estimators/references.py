"""Shared helpers of the passes' tests: per-sample penalties at small float64 steps, and the
BatchNorm reference (an eval-mode copy holding the batch's biased statistics)."""
import copy

import torch
from torch import nn

from margreg_fast import marginal_density_penalty
from margreg_fast._estimators import estimate
from margreg_fast._monitor import secant_ratio

#: float64 steps small enough that truncation is far below the tolerances (as in test_batchnorm.py).
STEPS = {"fd": 1e-6, "central": 1e-4, "rfd": 1e-4}


def per_sample(model, x, method, seed=3):
    torch.manual_seed(seed)
    return marginal_density_penalty(model, x, estimator=method, step=STEPS.get(method, 1e-2), reduction="none")


def flat_grad(model, value):
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, list(model.parameters()))])


def cosine(a, b):
    return (a @ b / (a.norm() * b.norm())).item()


def ratio(model, x, method, seed=3):
    torch.manual_seed(seed)
    est = estimate(model, x, None, penalty_kind="marginal", estimator=method, step=STEPS[method])
    return secant_ratio(est.slope, est.grad_norm)


def batch_statistics_copy(model, x):
    """An eval-mode copy whose BatchNorm modules hold the batch's biased statistics as running statistics."""
    frozen = copy.deepcopy(model)
    stats = {}
    hooks = [m.register_forward_pre_hook(lambda m, i: stats.__setitem__(m, torch.var_mean(
        i[0].transpose(0, 1).flatten(1), dim=1, unbiased=False)))
        for m in frozen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        frozen(x)
    for h in hooks:
        h.remove()
    for m, (var, mean) in stats.items():
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    return frozen.eval()
