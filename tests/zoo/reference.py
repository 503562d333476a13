r"""An independent reference for the penalty of a train-mode model: plain torch, none of margreg_fast.

margreg_fast defines the per-sample penalty under train-mode BatchNorm and stochastic layers as that
of the network with BatchNorm normalising by the clean batch's statistics, held fixed in x, and with
the clean pass's dropout / drop-path masks. The reference builds that network directly:

1. a deep copy of the model runs one train-mode forward on the batch (no grad), from a given seed;
   forward hooks on its BatchNorm modules record each one's input statistics, mean and *biased*
   variance (what batch_norm normalises with), computed here with ``torch.var_mean``;
2. the copy goes to eval mode with those statistics as its running statistics (eval-mode batch_norm
   computes (a - running_mean) / sqrt(running_var + eps), the train-mode normalisation of this
   batch), and its dropout and drop-path modules back to train mode;
3. its forward from the same seed draws the same masks as step 1 and as the library's clean pass
   (torch's global generator, in module order: the same modules draw, in the same order), and
   R_i = ||grad_x logsumexp f(x)_i||^2 by one ordinary backward (per-sample: nothing couples the
   samples of an eval-mode network).

What it shares with the library is only the model and the seed: not the interception of batch-norm
calls, not the replay of generator states, not the statistics code, not the double backprop.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from tests.timm_import import import_timm


def _stochastic(module: nn.Module) -> bool:
    layers = import_timm().layers
    return isinstance(module, (_DropoutNd, layers.DropPath, layers.DropBlock2d))


def frozen_reference(model: nn.Module, x: torch.Tensor, seed: int) -> nn.Module:
    """The eval-mode copy of ``model`` holding the batch statistics of x, with its stochastic layers in train mode."""
    ref = copy.deepcopy(model).train()
    stats = {}

    def record(module, inputs, _output):
        a = inputs[0]
        var, mean = torch.var_mean(a, dim=[d for d in range(a.dim()) if d != 1], unbiased=False)
        stats[module] = (mean, var)

    norms = [m for m in ref.modules() if isinstance(m, _BatchNorm)]
    hooks = [m.register_forward_hook(record) for m in norms]
    torch.manual_seed(seed)
    with torch.no_grad():
        ref(x)
    for h in hooks:
        h.remove()
    assert len(stats) == len(norms), "a BatchNorm module did not run"
    ref.eval()
    for m, (mean, var) in stats.items():
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    for m in ref.modules():
        if _stochastic(m):
            m.train()
    return ref


def reference_penalty(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """R_i = ||grad_x logsumexp f(x)_i||^2 of the frozen reference network (B,), detached."""
    ref = frozen_reference(model, x, seed)
    x_in = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    (g,) = torch.autograd.grad(torch.logsumexp(ref(x_in), dim=1).sum(), x_in)
    return g.flatten(1).pow(2).sum(dim=1)
