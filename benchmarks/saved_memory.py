"""Bytes of the tensors autograd saves for backward: an estimate's forwards against a plain forward.

Counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor packed for backward, each
storage once (a tensor saved by two nodes occupies its memory once), in bytes of the storage,
attributed to the model forward (a forward hook on the model) during which it was first saved.
The estimate is the public ``marginal_density_penalty(model, x)`` under ``torch.no_grad`` (rfd's
value needs no probe). In fp32 it makes one forward, the clean pass (train-mode batch-norm
statistics held: per batch-norm call it adds per-channel statistics and scales; the activation is
the one batch-norm saves anyway). Under bf16 autocast it makes two (estimators/core.py,
"Autocast"): the caller's forward in bf16 (the CE's, nothing held) and an fp32 capture of x that
holds fp32 statistics for the penalty's passes; both columns are reported. Deterministic: no
timing, so one run per configuration.

Models: ``resnet`` = the kit's ResidualCNN (width 16, 2 blocks, train-mode BatchNorm, SiLU) on
3x32x32, batch 64; timm's ``resnet18`` (BatchNorm, ReLU) on 3x64x64, batch 16. Precisions: fp32
and bf16 autocast (CPU). ``python -m benchmarks.saved_memory`` writes
``benchmarks/results/saved_memory.{csv,md}``. tests/estimators/test_batchnorm.py bounds the held
statistics' own cost (the clean pass against a plain forward, also under autocast) with
:func:`saved_bytes_per_forward`.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
from pathlib import Path
from typing import Callable, Dict, List

import torch

from margreg_fast import marginal_density_penalty

RESULTS = Path(__file__).resolve().parent / "results"


def saved_bytes_per_forward(model: torch.nn.Module, run: Callable[[], object]) -> List[int]:
    """Bytes of the distinct storages that autograd saves while ``run()`` runs, per forward of ``model``
    (in call order; a storage counts once, in the forward that first saved it)."""
    storages: Dict[int, int] = {}
    per_forward: List[int] = []
    inside = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if inside and storage.data_ptr() not in storages:
            storages[storage.data_ptr()] = storage.nbytes()
            per_forward[-1] += storage.nbytes()
        return t

    def enter(module, args):
        inside.append(True)
        per_forward.append(0)

    def leave(module, args, out):
        inside.pop()

    hooks = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return per_forward


def compare(model: torch.nn.Module, x: torch.Tensor, autocast: bool) -> Dict[str, float]:
    """{"plain": bytes of model(x), "first": bytes of the estimate's first forward, "ratio": first / plain,
    "fp32_capture": bytes of its fp32 capture under autocast (0 without)}."""
    context = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    inputs = x.detach().requires_grad_()
    with context():
        (plain,) = saved_bytes_per_forward(model, lambda: model(inputs))
        with torch.no_grad():
            passes = saved_bytes_per_forward(model, lambda: marginal_density_penalty(model, inputs))
    return {"plain": plain, "first": passes[0], "ratio": passes[0] / plain, "fp32_capture": sum(passes[1:])}


def models():
    from margreg_fast.kit.models import ResidualCNN
    from tests.timm_import import import_timm

    torch.manual_seed(0)
    yield "resnet", ResidualCNN(in_channels=3, width=16, blocks=2).train(), torch.randn(64, 3, 32, 32)
    timm = import_timm()
    yield "resnet18", timm.create_model("resnet18", num_classes=10).train(), torch.randn(16, 3, 64, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, model, x in models():
        for precision in ("fp32", "bf16"):
            result = compare(model, x, autocast=precision == "bf16")
            rows.append({"model": name, "precision": precision, **result})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "saved_memory.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Saved tensors: an estimate's forwards against a plain forward", "",
             "Command: `python -m benchmarks.saved_memory` (bytes of distinct storages saved for backward by "
             "`marginal_density_penalty(model, x)`: its first forward -- the clean pass in fp32, the caller's "
             "bf16 forward under autocast -- and, under autocast, its fp32 capture of x).", "",
             "| model | precision | plain forward (MiB) | estimate's first forward (MiB) | ratio | fp32 capture (MiB) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['plain'] / 2**20:.2f} | {r['first'] / 2**20:.2f} | "
              f"{r['ratio']:.3f} | {r['fp32_capture'] / 2**20:.2f} |" for r in rows]
    (args.out / "saved_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
