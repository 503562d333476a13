r"""Extra ("probe") forward passes that leave the model's state exactly as one plain forward left it.

The fd / central / jvp estimators evaluate the model again at x + h v (and x - h v). In train mode a
BatchNorm layer would update its running statistics (and ``num_batches_tracked``) a second time.
:func:`frozen_running_stats` switches ``track_running_stats`` off for the duration of the probe on
every ``_BatchNorm`` (BatchNorm1d/2d/3d, their lazy forms, SyncBatchNorm) that is training and
tracking. With the flag off a training-mode BatchNorm still normalises with the batch statistics, so
its output is unchanged, but it passes no running buffers to ``F.batch_norm`` and skips the counter:
nothing is written. Why this way rather than restoring a copy of the buffers afterwards: an in-place
restore bumps the buffers' version counters, and autograd (which saved them in the first forward)
then refuses to backpropagate. Under ``torch.compile`` the flag is a guarded attribute, so the probe
runs a second compiled graph (compiled once, cached) instead of silently reusing the tracking one.

Under ``DistributedDataParallel`` the probe calls the wrapped ``module`` directly: a second DDP
forward would broadcast rank 0's buffers in place again (overwriting this rank's fresh statistics and
bumping versions autograd checks) and re-prepare the reducer. Gradients from the probe still reach
the same parameters, whose gradient hooks fire once per backward, so DDP averages them as usual.

Other layers that mutate buffers in forward (e.g. InstanceNorm with ``track_running_stats=True``)
are not frozen.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Within the block, training-mode BatchNorm layers of ``module`` use batch statistics but record nothing."""
    frozen = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module a DDP wrapper holds, or ``model`` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def probe_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) without touching running statistics or DDP state (see the module docstring)."""
    inner = unwrap_ddp(model)
    with frozen_running_stats(inner):
        return inner(x)
