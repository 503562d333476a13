"""Worker for tests/test_distributed.py::test_fsdp_* (started by torch.distributed.run, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node 2 -m tests.workers.fsdp OUT_DIR
Each rank takes its half of a fixed global batch and makes two regularised SGD steps on an MLP
sharded with FSDP2 (``fully_shard`` on every Linear layer and on the root), once per estimator in
:data:`METHODS` (``"default"`` = ``MarginalDensityRegularizer(weight)``'s own method). Rank 0 saves
the gathered parameters to OUT_DIR/fsdp_{method}.pt. ``exact`` runs twice: with FSDP's defaults,
where rank 0 saves the error it raises (OUT_DIR/fsdp_exact_error.pt), and as the error advises
(``set_reshard_after_backward(False)``, every FSDP module resharded after each optimizer step, so
the next forward gathers the updated parameters), where it saves them (OUT_DIR/fsdp_exact.pt).
"""
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from margreg_fast._regularizer import MarginalDensityRegularizer
from tests.workers.lifecycle import finish

GLOBAL_BATCH, LR, WEIGHT, STEPS = 8, 0.5, 2.0, 2
METHODS = ("default", "fd", "central", "jvp")


def data():
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 10, (GLOBAL_BATCH,), generator=gen)


def mlp():
    """The MLP in float64: the finite-difference estimators' parameter gradient carries the forward's
    rounding amplified by 1/h, and in fp32 (eps 1.2e-7, h ~ 3.5e-4 RMS) that is ~1e-5 of a step whose
    sums FSDP and one process add in other orders and blocks; in float64 it is ~1e-8 of it."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 10)).double()


def regularizer(method):
    return MarginalDensityRegularizer(WEIGHT) if method == "default" else MarginalDensityRegularizer(WEIGHT, estimator=method)


def train(model, x, y, method, after_step=lambda: None):
    """``STEPS`` SGD steps of the regularised loss on (x, y), calling ``after_step()`` after each."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    reg = regularizer(method)
    for _ in range(STEPS):
        opt.zero_grad()
        loss, _ = reg(model, x, y)
        loss.backward()
        opt.step()
        after_step()


def reshard_all(model):
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def sharded():
    model = mlp()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def gathered(model):
    return {name: value.full_tensor() for name, value in model.state_dict().items()}


def main(out_dir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = data()
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]

    for method in METHODS:
        model = sharded()
        train(model, xs, ys, method)
        params = gathered(model)
        if rank == 0:
            torch.save(params, os.path.join(out_dir, f"fsdp_{method}.pt"))

    try:
        train(sharded(), xs, ys, "exact")
        error = None
    except Exception as err:  # noqa: BLE001 - the test checks its type and message
        error = {"type": type(err).__name__, "message": str(err)}
    if rank == 0:
        torch.save(error, os.path.join(out_dir, "fsdp_exact_error.pt"))

    model = sharded()
    model.set_reshard_after_backward(False)
    train(model, xs, ys, "exact", after_step=lambda: reshard_all(model))
    params = gathered(model)
    if rank == 0:
        torch.save(params, os.path.join(out_dir, "fsdp_exact.pt"))
    finish()


if __name__ == "__main__":
    main(sys.argv[1])
