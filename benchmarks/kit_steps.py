"""The kit's training step as the timing benchmarks run it, and the interleaved timing of several steps.

Shared by ``train_step_adversarial.py`` and ``second_setting_cost.py``: each builds one seeded model per
configuration and, per scheme, the step the kit trains with (``kit.experiments.training.step_objective``:
the scheme's objective, backward, an optimizer step). The optimizer is SGD at lr 0, so the weights, and
hence the work of every step, stay fixed however many steps are timed. ``interleaved_medians`` times one
round of every step in turn, ``rounds`` times, so that a drift in the shared machine's load reaches every
step alike and the ratios between them stay valid.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Hashable

import torch

from margreg_fast.kit.experiments.config import ExperimentConfig
from margreg_fast.kit.experiments.model_factory import build_model
from margreg_fast.kit.experiments.training import NUM_CLASSES, step_objective


def kit_steps(cfg: ExperimentConfig, x: torch.Tensor, y: torch.Tensor) -> Dict[str, Callable[[], None]]:
    """{scheme: a function running one training step of it on (x, y)} for every scheme of ``cfg``, on one
    model built from ``cfg`` (seed 0)."""
    torch.manual_seed(0)
    model = build_model(cfg, in_shape=tuple(x.shape[1:]), num_classes=NUM_CLASSES)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def step_of(scheme):
        objective = step_objective(cfg, scheme)

        def step():
            opt.zero_grad(set_to_none=True)
            loss, _ = objective(0)(model, x, y)
            loss.backward()
            opt.step()
        return step
    return {s: step_of(s) for s in cfg.schemes}


def interleaved_medians(steps: Dict[Hashable, Callable[[], None]], warmup: int, rounds: int,
                        repeat: int = 1) -> Dict[Hashable, float]:
    """{key: median seconds per step}: ``warmup`` untimed calls of each step, then ``rounds`` rounds, each
    timing ``repeat`` calls of every step in turn."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(repeat):
                step()
            times[k].append((time.perf_counter() - t0) / repeat)
    return {k: statistics.median(ts) for k, ts in times.items()}
