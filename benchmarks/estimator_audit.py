"""What the direction audit (``audit_every=``) costs: training-step time with and without it.

For each model, the median time of a full training step (regulariser forward, loss.backward(), SGD
step) with ``audit_every`` = None (off, the default), 1 (every step) and 10, as ratios to the step
without the audit, all timed in the same run, interleaved in rounds so that load on the machine hits
every setting alike. The audit runs on 8 samples: its cost grows with the model, not the batch.

    python benchmarks/estimator_audit.py [--steps 30]

Writes benchmarks/results/estimator_audit.{csv,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast import MarginalDensityRegularizer  # noqa: E402
from margreg_fast.kit import models  # noqa: E402
from tests.timm_import import import_timm  # noqa: E402

SETTINGS = (None, 1, 10)


def build(name: str):
    """(model, x, y): a kit CNN with BatchNorm on 1x20x20 (batch 64), or timm's test_efficientnet on 3x32x32 (batch 32)."""
    torch.manual_seed(0)
    if name == "ResidualCNN":
        return (models.ResidualCNN(in_channels=1, width=16, blocks=2, activation="silu"),
                torch.rand(64, 1, 20, 20), torch.randint(0, 10, (64,)))
    model = import_timm().create_model(name, pretrained=False, num_classes=10).train()
    return model, torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ResidualCNN", "test_efficientnet"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, cells = [], []
    for name in args.models:
        model, x, y = build(name)
        opt = torch.optim.SGD(model.parameters(), 1e-3)
        regs = {every: MarginalDensityRegularizer(1.0, audit_every=every) for every in SETTINGS}
        times = {every: [] for every in SETTINGS}
        for step in range(args.steps + 1):
            for every, reg in regs.items():
                start = time.perf_counter()
                loss, _ = reg(model, x, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step:  # the first round warms up
                    times[every].append(time.perf_counter() - start)
        base = statistics.median(times[None])
        # every=10 audits 1 step in 10: its median is an unaudited step, so its cost is the mean
        row = {"model": name, "step_s": base, "every_1": statistics.median(times[1]) / base,
               "every_10": statistics.mean(times[10]) / statistics.mean(times[None])}
        rows.append(row)
        cells.append([name, f"{1000 * base:.0f}", f"{row['every_1']:.2f}", f"{row['every_10']:.2f}"])
        print(" | ".join(cells[-1]), flush=True)
    lines = report.table(["model", "step without audit (ms, median)", "audit_every=1 (median ratio)",
                          "audit_every=10 (mean ratio)"], cells, "lrrr")
    title = (f"Cost of the direction audit (8 samples, exact as the reference) per training step of the default "
             f"estimator, {args.steps} interleaved rounds, 1 thread on a shared CPU.")
    print(report.publish("estimator_audit", rows, title, lines))


if __name__ == "__main__":
    main()
