r"""The cells of the matrix test (tests/matrix/test_matrix.py) and the one training step each runs.

Axes: mode {eager, compile} x processes {1, DDP over 2 gloo processes, FSDP2 over 2} x precision
{fp32, bf16 autocast} x model {bn: train-mode BatchNorm CNN, dropout: MLP with Dropout(0.3), sdpa: a
ViT on scaled_dot_product_attention} x method {default (rfd), exact}: 72 cells. A cell's step builds
the model (seeded), wraps it, seeds torch's generator (the dropout masks and rfd's signs), computes
``MarginalDensityRegularizer(WEIGHT, method)(net, x, y)`` and backpropagates; its outcome is the loss
and the flattened parameter gradient (for DDP / FSDP: after their averaging over the processes), or
the error it raised.

Wrapping: ``compile`` is ``torch.compile(model)`` with inductor's ``fallback_random`` (inductor
otherwise draws dropout masks from its own generator, and no cell could match eager's masks); under
DDP the compiled module is wrapped, ``DDP(torch.compile(model))``; under FSDP2 ``fully_shard`` goes on
every Linear / Conv layer and on the root, and the sharded model is compiled.

Which cells must raise (``expected_error``), with an error that says what to do instead:
``exact`` on SDPA (no double backward of the fused kernel), on a compiled model (AOTAutograd has no
double backward) and under FSDP2 with its defaults (parameters resharded before the double backward).

Device: CPU, or the device named by ``MARGREG_MATRIX_DEVICE`` (``scripts/gpu_check.sh`` runs the
1-process cells on ``cuda``; the 2-process kinds use gloo on CPU).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import traceback
from typing import Dict, NamedTuple, Optional

import torch
from torch import nn

from margreg_fast.kit import models
from margreg_fast.regularizer import MarginalDensityRegularizer

MODES = ("eager", "compile")
PROCESSES = ("single", "ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")
MODELS = ("bn", "dropout", "sdpa")
METHODS = ("default", "exact")
GLOBAL_BATCH, WORLD, WEIGHT, SEED = 8, 2, 1.0, 7
DEVICE = torch.device(os.environ.get("MARGREG_MATRIX_DEVICE", "cpu"))


class Cell(NamedTuple):
    mode: str
    processes: str
    precision: str
    model: str
    method: str

    @property
    def id(self) -> str:
        return "-".join(self)


def cells(processes: Optional[str] = None):
    """Every cell (of one process kind)."""
    return [Cell(*c) for c in itertools.product(MODES, PROCESSES, PRECISIONS, MODELS, METHODS)
            if processes is None or c[1] == processes]


def expected_error(cell: Cell) -> Optional[str]:
    """What the error of a cell that must raise has to say, or None. The first obstacle is named:
    FSDP's resharding (checked before the model runs), then the compiled graph, then SDPA."""
    if cell.method != "exact":
        return None
    if cell.processes == "fsdp":
        return "set_reshard_after_backward(False)"
    if cell.mode == "compile":
        return "torch.compile"
    if cell.model == "sdpa":
        return "scaled_dot_product_attention"
    return None


def build(model: str) -> nn.Module:
    torch.manual_seed(0)
    if model == "bn":
        net = models.SmallCNN(width=4, image_size=8, batchnorm=True, activation="silu")
    elif model == "dropout":
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Dropout(0.3), nn.Linear(32, 32), nn.Tanh(),
                            nn.Linear(32, 10))
    else:
        net = models.SmallViT(dim=16, image_size=8, heads=2, depth=1)
    return net.to(DEVICE)


def data():
    gen = torch.Generator().manual_seed(11)
    x, y = torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=gen), torch.randint(0, 10, (GLOBAL_BATCH,), generator=gen)
    return x.to(DEVICE), y.to(DEVICE)


def shard(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank ``rank``'s part of a global batch."""
    return x.chunk(WORLD)[rank]


def _fully_shard(model: nn.Module) -> nn.Module:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(DEVICE.type, (dist.get_world_size(),))
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fully_shard(m, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def wrap(model: nn.Module, mode: str, processes: str) -> nn.Module:
    if processes == "fsdp":
        model = _fully_shard(model)
    if mode == "compile":
        model = torch.compile(model)
    if processes == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    return model


def _gradient(model: nn.Module) -> torch.Tensor:
    grads = []
    for p in model.parameters():
        g = torch.zeros_like(p) if p.grad is None else p.grad
        grads.append((g.full_tensor() if hasattr(g, "full_tensor") else g).detach().flatten().double())
    return torch.cat(grads)


def step(cell: Cell, x: torch.Tensor, y: torch.Tensor, seed: int = SEED) -> Dict:
    """One regularised step of ``cell`` on (x, y): {"loss", "grad"}, or the error it raised as
    {"error": type name, "message", "traceback"} (every error: a worker must go on to its next cell)."""
    model = build(cell.model)
    net = wrap(model, cell.mode, cell.processes)
    reg = MarginalDensityRegularizer(WEIGHT) if cell.method == "default" else \
        MarginalDensityRegularizer(WEIGHT, method=cell.method)
    bf16 = cell.precision == "bf16"
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    try:
        with inductor_config.patch(fallback_random=True):
            torch.manual_seed(seed)
            with autocast:
                loss, _ = reg(net, x, y)
            loss.backward()
    except Exception as err:  # noqa: BLE001 - reported; the test decides whether the cell may raise it
        return {"error": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    return {"loss": loss.detach().double(), "grad": _gradient(model)}
