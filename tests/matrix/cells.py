r"""The cells of the matrix test (tests/matrix/test_matrix.py) and the one training step each runs.

Axes: mode {eager, compile} x processes {1, DDP over 2 gloo processes, FSDP2 over 2} x precision
{fp32, bf16 autocast} x model {bn: train-mode BatchNorm CNN, dropout: MLP with Dropout(0.3), sdpa: a
ViT on scaled_dot_product_attention} x method {default (rfd), exact}: 72 cells. The columns of
the stacks people train in, over {eager, compile} x {1 process, DDP}, fp32, the default method
(16 cells): ``checkpoint`` (BatchNorm, an in-place activation and dropout in blocks under
``torch.utils.checkpoint``, as timm's ``set_grad_checkpointing``), ``inference`` (the BatchNorm CNN's
step under ``torch.inference_mode``, no backward), ``bnact`` (timm's ``BatchNormAct2d`` with its
in-place SiLU) and ``inductor_rng`` (the dropout MLP with inductor's own generator:
``fallback_random=False``). A cell's step builds
the model (seeded), wraps it, seeds torch's generator (the dropout masks and rfd's signs), computes
``MarginalDensityRegularizer(WEIGHT, method)(net, x, y)`` and backpropagates; its outcome is the loss
and the flattened parameter gradient (for DDP / FSDP: after their averaging over the processes), or
the error it raised.

Wrapping: ``compile`` is ``torch.compile(model)`` with inductor's ``fallback_random`` (inductor
otherwise draws dropout masks from its own generator, and no cell could match eager's masks; the
``inductor_rng`` column does draw from it, and its cell computes its own reference, see
:func:`step`); under
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
from margreg_fast._regularizer import MarginalDensityRegularizer

MODES = ("eager", "compile")
PROCESSES = ("single", "ddp", "fsdp")
PRECISIONS = ("fp32", "bf16")
MODELS = ("bn", "dropout", "sdpa")
METHODS = ("default", "exact")
#: The columns of the stacks people train in (module docstring).
STACKS = ("checkpoint", "inference", "bnact", "inductor_rng")
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
    grid = [Cell(*c) for c in itertools.product(MODES, PROCESSES, PRECISIONS, MODELS, METHODS)]
    stacks = [Cell(mode, kind, "fp32", stack, "default")
              for mode, kind, stack in itertools.product(MODES, ("single", "ddp"), STACKS)]
    return [c for c in grid + stacks if processes is None or c.processes == processes]


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


class CheckpointedCNN(nn.Module):
    """Two conv -> BatchNorm -> SiLU blocks (in place, then with Dropout(0.2)), each under non-reentrant
    ``torch.utils.checkpoint`` when ``checkpointed`` (as timm's ``set_grad_checkpointing``)."""

    def __init__(self, checkpointed: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(inplace=True)),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(), nn.Dropout(0.2))])
        self.head = nn.Linear(4 * 8 * 8, 10)
        self.checkpointed = checkpointed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.checkpointed else block(x)
        return self.head(x.flatten(1))


class InductorRNGMLP(nn.Sequential):
    """The dropout MLP under a forward of its own: dynamo caches graphs per code object and does not guard
    on inductor's ``fallback_random``, so the dropout cells' graphs (``fallback_random=True``) would
    otherwise serve this column too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def build(model: str, reference: bool = False) -> nn.Module:
    """The model of a cell (``reference``: of its reference, the checkpoint column's without checkpointing)."""
    torch.manual_seed(0)
    if model in ("bn", "inference"):
        net = models.SmallCNN(width=4, image_size=8, batchnorm=True, activation="silu")
    elif model == "checkpoint":
        net = CheckpointedCNN(checkpointed=not reference)
    elif model == "bnact":
        from tests.timm_import import import_timm

        act = import_timm().layers.BatchNormAct2d  # SiLU applied in place after the batch norm
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), act(4, act_layer="silu"), nn.Conv2d(4, 4, 3, padding=1),
                            act(4, act_layer="silu"), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    elif model in ("dropout", "inductor_rng"):
        layers = (nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Dropout(0.3), nn.Linear(32, 32), nn.Tanh(),
                  nn.Linear(32, 10))
        net = nn.Sequential(*layers) if model == "dropout" else InductorRNGMLP(*layers)
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


def inductor_reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """The loss CE + WEIGHT mean ||grad_x logsumexp f(x)||^2 of the (compiled) ``net`` from ``seed``, by plain
    autograd through one forward: the masks are those inductor's own generator draws from that seed,
    independent of the library's passes."""
    torch.manual_seed(seed)
    xi = x.detach().requires_grad_()
    z = net(xi)
    (g,) = torch.autograd.grad(torch.logsumexp(z, 1).sum(), xi)
    penalty = g.flatten(1).pow(2).sum(1).mean()
    return (torch.nn.functional.cross_entropy(z, y) + WEIGHT * penalty).detach().double()


def step(cell: Cell, x: torch.Tensor, y: torch.Tensor, seed: int = SEED, reference: bool = False) -> Dict:
    """One regularised step of ``cell`` on (x, y): {"loss", "grad", "stats"}, or the error it raised as
    {"error": type name, "message", "traceback"} (every error: a worker must go on to its next cell).

    ``inference``: the step runs under ``torch.inference_mode`` (under ``torch.no_grad`` for the
    ``reference``), and has no backward: no "grad". ``inductor_rng``: inductor draws the masks from its
    own generator, and the outcome also holds ``reference_loss`` (:func:`inductor_reference`)."""
    model = build(cell.model, reference)
    net = wrap(model, cell.mode, cell.processes)
    reg = MarginalDensityRegularizer(WEIGHT) if cell.method == "default" else \
        MarginalDensityRegularizer(WEIGHT, estimator=cell.method)
    bf16 = cell.precision == "bf16"
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    evaluation = cell.model == "inference"
    context = (torch.no_grad() if reference else torch.inference_mode()) if evaluation else contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    try:
        with inductor_config.patch(fallback_random=cell.model != "inductor_rng"):
            torch.manual_seed(seed)
            with autocast, context:
                loss, stats = reg(net, x, y)
            if not evaluation:
                loss.backward()
            extra = {"reference_loss": inductor_reference(_inner(net), x, y, seed)} \
                if cell.model == "inductor_rng" else {}
    except Exception as err:  # noqa: BLE001 - reported; the test decides whether the cell may raise it
        return {"error": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    grad = {} if evaluation else {"grad": _gradient(model)}
    return {"loss": loss.detach().double(), "stats": stats, **grad, **extra}


def _inner(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
