"""Cost against leakage: mdr and its cheaper forms (a fraction of each batch, every K-th step).

Cost: the training step of each form, as a multiple of a plain step, on the claims' model (PaperCNN
width 8, batch 64 of 1x56x28) in one interleaved benchmark run (benchmarks/results/train_step_claims.csv,
``bench_train_step.py --models papercnn``): mdr trains with the default estimator rfd, so mdr@F is
timed as rfd@F and mdr%K as rfd%K. Outcome: leakage_paper and clean accuracy on the claims'
instrument (docs/results/claims/claims.json, the fully evaluated runs at the selected weight): the mean
over seeds and, for each cheaper form, the paired difference from mdr with its 95% bootstrap interval
and verdict, as the claims report computes them.

    python benchmarks/cost_leakage.py   # writes benchmarks/results/cost_leakage.md, docs/figures/cost_leakage.png
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from margreg_fast.kit.experiments.claims_report import comparison_cell, number_cell  # noqa: E402

CLAIMS = ROOT / "docs" / "results" / "claims" / "claims.json"
STEPS = report.RESULTS / "train_step_claims.csv"
FIGURE = ROOT / "docs" / "figures" / "cost_leakage.png"
SUBJECT, BASELINE = "mdr", "none"
#: The benchmark's name of each kit scheme's step (mdr trains with rfd, the default estimator).
BENCH_NAME = {"none": "plain", "mdr": "rfd"}
METRICS = ("leakage_paper", "clean_acc")


def bench_name(scheme: str) -> str:
    return BENCH_NAME.get(scheme, scheme.replace(SUBJECT, BENCH_NAME[SUBJECT], 1))


def step_costs(path: Path = STEPS) -> dict:
    """{benchmark method: median step time x plain} of the eager papercnn rows."""
    with open(path) as fh:
        return {r["method"]: float(r["time_ratio"]) for r in csv.DictReader(fh)
                if r["model"] == "papercnn" and r["mode"] == "eager" and r["status"] == "ok"}


def points(claims: dict, costs: dict) -> list[dict]:
    """One row per scheme (none, mdr, then each cheaper form): its cost, the mean over seeds of each
    metric at its selected weight, and (cheaper forms) the paired comparison with mdr per metric."""
    full = [r for r in claims["records"] if r["experiment"] == "blockmnist" and r["full"]]
    versus = {c["scheme"]: {row["metric"]: row["versus"][0] for row in c["rows"]} for c in claims["cheaper"]}
    rows = []
    for scheme in (BASELINE, SUBJECT, *versus):
        runs = [r["scores"] for r in full if r["scheme"] == scheme]
        means = {k: math.fsum(s[k] for s in runs) / len(runs) if runs and all(s.get(k) is not None for s in runs)
                 else None for k in METRICS}
        rows.append({"scheme": scheme, "cost": costs.get(bench_name(scheme)), "seeds": len(runs), **means,
                     "versus": {k: versus.get(scheme, {}).get(k) for k in METRICS}})
    return rows


def _cell_or_blank(c: dict | None) -> str:
    return "" if c is None else comparison_cell(c)


def write_table(rows: list[dict], claims: dict, path: Path) -> str:
    keep = {c["scheme"]: c["keeps_leakage_cut"] for c in claims["cheaper"]}
    subject_cost = next(r["cost"] for r in rows if r["scheme"] == SUBJECT)
    lines = report.table(
        ["scheme", "step x plain (benchmark)", f"step x {SUBJECT}'s", "leakage_paper", f"− {SUBJECT} [95% CI]",
         "keeps the leakage cut", "clean acc", f"− {SUBJECT} [95% CI]"],
        [[r["scheme"], number_cell(r["cost"]),
          number_cell(None if r["cost"] is None or not subject_cost else r["cost"] / subject_cost),
          number_cell(r["leakage_paper"]), _cell_or_blank(r["versus"]["leakage_paper"]),
          keep[r["scheme"]]["verdict"] if r["scheme"] in keep else "", number_cell(r["clean_acc"]),
          _cell_or_blank(r["versus"]["clean_acc"])] for r in rows], "lrrrllrl")
    seeds = sorted({r["seeds"] for r in rows})
    title = (f"Cost against leakage on BlockMNIST ({'/'.join(map(str, seeds))} seeds per row, the selected weight): "
             f"the step cost of each form of {SUBJECT} as a multiple of a plain step ({STEPS.relative_to(ROOT)}, "
             f"eager papercnn rows), its mean leakage_paper and clean accuracy, and the paired difference from "
             f"{SUBJECT} with its 95% bootstrap interval ({CLAIMS.relative_to(ROOT)}). \"Keeps the leakage cut\": "
             "the claims report's non-inferiority verdict (a margin of 0.2 x mdr's cut).")
    return report.write_markdown(path, title, lines, report.command_line())


def write_figure(rows: list[dict], path: Path) -> None:
    """Leakage and accuracy against cost; bars: mdr's mean plus the paired 95% interval of (form − mdr)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subject = next(r for r in rows if r["scheme"] == SUBJECT)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in zip(axes, METRICS, ("leakage_paper (lower is better)", "clean accuracy")):
        for r in rows:
            if r["cost"] is None or r[key] is None:
                continue
            c = r["versus"][key]
            yerr = None
            if c is not None and c["low"] is not None:
                yerr = [[max(0.0, r[key] - subject[key] - c["low"])], [max(0.0, subject[key] + c["high"] - r[key])]]
            colour = "k" if r["scheme"] == BASELINE else ("C3" if r["scheme"] == SUBJECT else
                                                           ("C0" if "@" in r["scheme"] else "C2"))
            ax.errorbar([r["cost"]], [r[key]], yerr=yerr, fmt="o", color=colour, capsize=3)
            ax.annotate(r["scheme"], (r["cost"], r[key]), xytext=(4, 4), textcoords="offset points", fontsize=8)
        ax.set_xlabel("training step cost (x plain, benchmark)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("mdr and its cheaper forms on BlockMNIST: blue, a fraction of each batch; green, every K-th step. "
                 "Bars: mdr's mean + the paired 95% interval of (form − mdr)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    claims = json.loads(CLAIMS.read_text())
    rows = points(claims, step_costs())
    print(write_table(rows, claims, report.RESULTS / "cost_leakage.md"))
    write_figure(rows, FIGURE)
    print(f"wrote {FIGURE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
