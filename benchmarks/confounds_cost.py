"""What the confound rows add to a claim model's evaluation: wall seconds of evaluation.evaluate_model
(the claims' full evaluation) against scale.scale_free_scores and budgets.budget_scores (what
``claims --scale-free --budgets`` adds), on the same trained model, one after the other in one process,
one thread.

    margreg-fast train blockmnist --methods none mdr --seeds 0 --eval-samples 500 \\
        --weights-file margreg_fast/kit/configs/blockmnist_weights.json --threads 1 --out runs/confounds-cost
    python benchmarks/confounds_cost.py runs/confounds-cost none mdr

Writes benchmarks/results/confounds_cost.{csv,md}. Each evaluation takes minutes, so each is timed once
per model: a record of one run on the machine named in the table, not a median; the ratio is within
the same process and minutes of each other.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast.kit.experiments.budgets import budget_scores  # noqa: E402
from margreg_fast.kit.experiments.evaluation import evaluate_model  # noqa: E402
from margreg_fast.kit.experiments.datasets import build_datasets  # noqa: E402
from margreg_fast.kit.experiments.runner import deterministic, load_output_config, run_dir  # noqa: E402
from margreg_fast.kit.experiments.scale import scale_free_scores  # noqa: E402
from margreg_fast.kit.experiments.training import train_run  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory of `margreg-fast train` (seed 0 of each method)")
    parser.add_argument("methods", nargs="+")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_output_config(args.out)
    rows = []
    for method in args.methods:
        with deterministic():
            train, test = build_datasets(cfg, 0)
            model = train_run(cfg, method, 0, train, run_dir(args.out, cfg, method, 0), quiet=True,
                              allow_training=False).model.cpu()
            result, evaluation = timed(lambda: evaluate_model(model, test, cfg, 0))
            _, scale = timed(lambda: scale_free_scores(model, test, cfg, result["metrics"]["density_shift"]))
            _, budgets = timed(lambda: budget_scores(model, test, cfg, 0))
        rows.append({"method": method, "eval_samples": cfg.eval_samples, "evaluate_model_s": round(evaluation, 1),
                     "scale_free_s": round(scale, 1), "budgets_s": round(budgets, 1),
                     "added_over_evaluation": round((scale + budgets) / evaluation, 2)})
        print(rows[-1], flush=True)
    title = (f"Cost of the confound rows per claim model ({cfg.model} width {cfg.width}, {cfg.eval_samples} evaluation "
             f"images, 1 thread, {platform.machine()}, {torch.get_num_threads()} torch thread; a shared machine)")
    body = report.table(["method", "evaluate_model s", "scale-free s", "budgets s", "(scale-free + budgets) / evaluation"],
                        [[r["method"], f"{r['evaluate_model_s']:.0f}", f"{r['scale_free_s']:.0f}", f"{r['budgets_s']:.0f}",
                          f"{r['added_over_evaluation']:.2f}"] for r in rows], "lrrrr")
    print(report.publish("confounds_cost", rows, title, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
