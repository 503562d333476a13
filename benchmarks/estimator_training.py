"""Which estimators does training game? The outcome of training with each one (margreg_fast.kit.estimator_training).

For each activation and estimator: a max-pool CNN trained 8 epochs at weight 10 on zero-background
digits; on held-out images the true penalty (exact R) over the estimator's own estimate, over the
exact-trained twin's, the monitor's secant ratio, whether the monitor warned, and accuracy.

    python benchmarks/estimator_training.py [--activations relu gelu silu] [--methods fd central rfd]

Writes benchmarks/results/estimator_training.{csv,md}.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast.kit.estimator_training import judge_all  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activations", nargs="+", default=["relu", "gelu", "silu"])
    p.add_argument("--methods", nargs="+", default=["jvp", "fd", "central", "rfd"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    outcomes = judge_all(args.methods, args.activations)
    rows, lines = [], ["| activation | method | true R | own estimate | true / own | true / exact twin | "
                       "secant ratio | monitor warned | accuracy |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for (method, act), o in outcomes.items():
        twin = outcomes[("exact", act)]
        rows.append({**dataclasses.asdict(o), "true_over_own": o.true_over_own, "true_over_twin": o.over_twin(twin)})
        lines.append(f"| {act} | {method} | {o.true_penalty:.4f} | {o.own_estimate:.4f} | {o.true_over_own:.2f} | "
                     f"{o.over_twin(twin):.2f} | {o.secant_ratio:.2f} | {'yes' if o.warned else 'no'} | "
                     f"{o.accuracy:.3f} |")
        print(lines[-1], flush=True)
    title = ("Training outcome per estimator: MaxPoolCNN (width 16, hidden 128), 8 epochs at weight 10 on the 8x8 "
             "digits on a zero 20x20 canvas, default step; measured on 397 held-out images.")
    print(report.publish("estimator_training", rows, title, lines))


if __name__ == "__main__":
    main()
