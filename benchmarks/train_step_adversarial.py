"""Cost of a training step of the claims' schemes, adversarial training included, and the matched-cost epochs.

The claims' model and step, built by the kit itself: PaperCNN (width 8, ReLU) on 64 real BlockMNIST
images (1x56x28, seed 0's training split), each scheme's objective from
``kit.experiments.training.step_objective`` at the claims' defaults (mdr: the library's default estimator
and step; mdr@0.5 and mdr@0.25: the penalty on a half and a quarter of each batch; pgd-at and trades: the PGD row's budget,
eps ``pgd_linf_eps`` with ``pgd_steps`` steps, TRADES at beta 6), then backward and an optimizer step
(SGD at lr 0, so the weights and hence the work stay fixed; ``benchmarks/kit_steps.py``). The attack is
part of the step, as in training. One process warms every scheme up, then runs ``--rounds`` rounds, each
timing one step of every scheme in turn (interleaved: the ratios stay valid while the load of the shared
machine drifts); the median per scheme is reported with its ratio to none in the same run.

Matched cost: every scheme sees the same batches per epoch, so the cost of E epochs is E x steps per
epoch x its median step. The epochs of scheme s that cost what ``--epochs`` (the claims' 10) epochs of
a reference r cost are E x t_r / t_s; the table gives them against mdr and mdr@0.5 (and the epochs of
mdr that cost what E epochs of s cost), and the ``--scheme-epochs`` of a claims command that trains the
adversarial schemes at mdr's cost (rounded to whole epochs, at least 1).

    python benchmarks/train_step_adversarial.py [--rounds 30] [--threads 1]

Writes benchmarks/results/train_step_adversarial.{csv,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.kit_steps import interleaved_medians, kit_steps  # noqa: E402
from margreg_fast.kit.experiments.config import ExperimentConfig  # noqa: E402
from margreg_fast.kit.experiments.datasets import build_datasets  # noqa: E402

SCHEMES = ("none", "mdr", "mdr@0.5", "mdr@0.25", "pgd-at", "trades")
ADVERSARIAL = ("pgd-at", "trades")
#: mdr and mdr@0.5, the fraction docs/guides/fractions.md recommends when cost decides.
REFERENCES = ("mdr", "mdr@0.5")


def matched_rows(ms: dict, epochs: int) -> list[dict]:
    rows = []
    for s, t in ms.items():
        row = {"scheme": s, "median_ms": t, "x_none": t / ms["none"]}
        for r in REFERENCES:
            row[f"epochs_at_{r}_cost"] = epochs * ms[r] / t  # epochs of s costing what `epochs` of r cost
        row["mdr_epochs_at_its_cost"] = epochs * t / ms["mdr"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, as the claims run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ExperimentConfig(schemes=SCHEMES)  # the claims' defaults: PaperCNN width 8, 1x56x28, batch 64, 10 epochs
    train, _ = build_datasets(cfg, 0)
    x, y = train.x[:cfg.batch_size], train.y[:cfg.batch_size]
    ms = {s: 1e3 * t for s, t in interleaved_medians(kit_steps(cfg, x, y), args.warmup, args.rounds).items()}
    rows = matched_rows(ms, cfg.epochs)
    e = cfg.epochs
    lines = report.table(
        ["scheme", "median step (ms)", "x none", f"epochs at the cost of {e} of mdr", f"epochs at the cost of {e} of mdr@0.5",
         f"epochs of mdr at the cost of {e} of it"],
        [[r["scheme"], f"{r['median_ms']:.1f}", f"{r['x_none']:.2f}", f"{r['epochs_at_mdr_cost']:.2f}",
          f"{r['epochs_at_mdr@0.5_cost']:.2f}", f"{r['mdr_epochs_at_its_cost']:.2f}"] for r in rows], "lrrrrr")
    matched = {s: max(1, round(e * ms["mdr"] / ms[s])) for s in ADVERSARIAL}
    lines += ["", f"Matched cost: `--scheme-epochs {' '.join(f'{s}={n}' for s, n in matched.items())}` trains the "
              f"adversarial schemes for the whole epochs nearest to the cost of mdr's {e} (rounded, at least 1); "
              f"pgd-at and trades attack with {cfg.pgd_steps} steps at eps {cfg.pgd_linf_eps:g}."]
    title = (f"Training step of the claims' schemes (PaperCNN width {cfg.width}, batch {cfg.batch_size} of 1x56x28 "
             f"BlockMNIST), CPU ({args.threads} intra-op thread(s), {os.cpu_count()} CPUs, load average "
             f"{os.getloadavg()[0]:.1f} at the end, median of {args.rounds} interleaved rounds).")
    print(report.publish("train_step_adversarial", rows, title, lines))


if __name__ == "__main__":
    main()
