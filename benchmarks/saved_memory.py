"""Bytes of the tensors autograd saves for backward: the estimate's clean pass against a plain forward.

The clean pass (``ModelPasses.clean``) is the training forward with train-mode batch-norm
statistics held; on top of a plain forward it saves, per batch-norm call, the per-channel statistics
and scales (the activation itself is the one batch-norm saves anyway). Counted with
``torch.autograd.graph.saved_tensors_hooks``: every tensor packed for backward, each storage once
(a tensor saved by two nodes occupies its memory once), in bytes of the storage. Deterministic: no
timing, so one run per configuration.

Models: ``resnet`` = the kit's ResidualCNN (width 16, 2 blocks, train-mode BatchNorm, SiLU) on
3x32x32, batch 64; timm's ``resnet18`` (BatchNorm, ReLU) on 3x64x64, batch 16. Precisions: fp32
and bf16 autocast (CPU). ``python -m benchmarks.saved_memory`` writes
``benchmarks/results/saved_memory.{csv,md}``; tests/estimators/test_batchnorm.py bounds the ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
from pathlib import Path
from typing import Callable, Dict

import torch

from margreg_fast.estimators.passes import ModelPasses

RESULTS = Path(__file__).resolve().parent / "results"


def saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages that autograd saves for backward while ``forward()`` runs."""
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())


def compare(model: torch.nn.Module, x: torch.Tensor, autocast: bool) -> Dict[str, float]:
    """{"plain": bytes of model(x), "clean": bytes of the clean pass, "ratio": clean / plain}."""
    context = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    inputs = x.detach().requires_grad_()
    with context():
        plain = saved_bytes(lambda: model(inputs))
        clean = saved_bytes(lambda: ModelPasses(model).clean(inputs))
    return {"plain": plain, "clean": clean, "ratio": clean / plain}


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
    lines = ["# Saved tensors: the clean pass against a plain forward", "",
             "Command: `python -m benchmarks.saved_memory` (bytes of distinct storages saved for backward).", "",
             "| model | precision | plain forward (MiB) | clean pass (MiB) | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['plain'] / 2**20:.2f} | {r['clean'] / 2**20:.2f} | "
              f"{r['ratio']:.3f} |" for r in rows]
    (args.out / "saved_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
