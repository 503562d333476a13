r"""An independent reference for the penalty of a train-mode model: plain torch autograd on a frozen copy.

margreg_fast defines the per-sample penalty under train-mode BatchNorm and stochastic layers as that
of the network with BatchNorm normalising by the clean batch's statistics, held fixed in x, and with
the clean pass's dropout / drop-path masks. The reference builds that network directly:

1. ``tests.estimators.references.batch_statistics_copy``: a deep copy runs one train-mode forward on
   the batch (no grad) and goes to eval mode holding each BatchNorm's input statistics, mean and
   *biased* variance, as running statistics (eval-mode batch_norm then computes the train-mode
   normalisation of this batch). That forward starts from the given seed, so the layers after a
   dropout or drop-path see the statistics of the masked activations, as in the library's clean pass;
2. its dropout and drop-path modules go back to train mode;
3. its forward from the same seed draws the same masks as the library's clean pass (torch's global
   generator, in module order: the same modules draw in the same order), and
   R_i = ||grad_x logsumexp f(x)_i||^2 by one ordinary backward (per sample: nothing couples the
   samples of an eval-mode network).

What it shares with the library is only the model and the seed: not the interception of batch-norm
calls, not the replay of generator states, not the statistics code, not the double backprop.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from tests.estimators.references import batch_statistics_copy
from tests.timm_import import import_timm


def _stochastic(module: nn.Module) -> bool:
    layers = import_timm().layers
    return isinstance(module, (_DropoutNd, layers.DropPath, layers.DropBlock2d))


def reference_penalty(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """R_i = ||grad_x logsumexp f(x)_i||^2 of the frozen reference network (B,), detached."""
    torch.manual_seed(seed)
    ref = batch_statistics_copy(model.train(), x)
    for m in ref.modules():
        if _stochastic(m):
            m.train()
    x_in = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    (g,) = torch.autograd.grad(torch.logsumexp(ref(x_in), dim=1).sum(), x_in)
    return g.flatten(1).pow(2).sum(dim=1)
