"""Atomic, ``weights_only``-loadable checkpoints and JSON files.

Every file is written to a temporary sibling, flushed and fsync'ed, then moved into place with
``os.replace`` (atomic on POSIX), so a process killed at any instant leaves either the previous
complete file or the new complete file, never a torn one.

A checkpoint holds only tensors and primitive containers (dict, list, tuple, int, float, str, bool,
None), so ``torch.load(path, weights_only=True)`` reads it: model and optimizer state dicts, the
epoch count, the torch CPU RNG state and the data-order generator state (both uint8 tensors), and
the per-step training times recorded so far.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

CHECKPOINT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()
    _atomic_write(path, lambda fh: fh.write(data))


def finite_or_none(value) -> float | None:
    """``float(value)``, or None when it is None or not finite (a metric undefined for this run; JSON
    has no nan)."""
    return None if value is None or not math.isfinite(value) else float(value)


def load_json(path: Path):
    with open(path) as fh:
        return json.load(fh)


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, data_generator: torch.Generator, step_times: list[float]) -> None:
    """Atomically save the complete training state after ``epoch`` finished epochs."""
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "data_rng": data_generator.get_state(),
        "step_times": [float(t) for t in step_times],
    }
    _atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; a corrupt file raises ValueError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for torn / foreign files
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a margreg_fast checkpoint (version {CHECKPOINT_VERSION})")
    return state


def restore(state: dict, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            data_generator: torch.Generator) -> None:
    """Put the model, optimizer and both RNGs back exactly as they were when ``state`` was saved."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    data_generator.set_state(state["data_rng"])
