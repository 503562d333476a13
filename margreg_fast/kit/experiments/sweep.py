"""Sweep the penalty weight (and the fd step) of mdr, and optionally of igr, on one experiment.

    python -m margreg_fast.kit.experiments.sweep --out runs/sweep --weights 0.1 0.3 1 3 10 --steps 0.01 0.1 \\
        --seeds 0 1 2 [--igr-weights 0.1 1 10] [any `experiment` option, e.g. --epochs 30]

The baseline (none, and igr at its default weight) is trained once (or read from ``--baseline``); every grid point is a full,
resumable ``experiment`` in its own sub-directory, evaluated with exactly the same metrics. The
table OUT/sweep.md lists each point with the pass/fail checks of the paper's claim against the
baseline (report.claim_checks). Nothing is selected or tuned here: every point is reported.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..cli import _add_common, _positive_float, config_from_args
from .checkpoint import load_json, save_json
from .report import claim_checks
from .runner import run_experiment

COLUMNS = ("clean_acc", "leakage", "insertion_auc", "pgd_linf_acc", "pgd_l2_acc", "density_shift", "worst_group_acc")


def _name(method: str, weight: float, step: float | None) -> str:
    return f"{method}-w{weight:g}" + ("" if step is None else f"-h{step:g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m margreg_fast.kit.experiments.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(parser)
    parser.add_argument("--weights", nargs="+", type=_positive_float, required=True, help="mdr weights")
    parser.add_argument("--steps", nargs="+", type=_positive_float, default=None, help="fd steps (default: --step)")
    parser.add_argument("--igr-weights", nargs="+", type=_positive_float, default=[], help="igr weights to sweep too")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="reuse none/igr from this finished `experiment` output (same options) instead of retraining")
    args = parser.parse_args(argv)
    try:
        base = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    kw = dict(quiet=args.quiet, device=args.device)
    if args.baseline is None:
        baseline = run_experiment(base.replace(methods=("none", "igr")), out / "baseline", **kw)["methods"]
    else:
        done = load_json(args.baseline / "results.json")
        if {k: v for k, v in done["config"].items() if k != "methods"} != {
                k: v for k, v in base.to_dict().items() if k != "methods"}:
            parser.error(f"--baseline {args.baseline} was run with other options than this sweep")
        baseline = {m: done["methods"][m] for m in ("none", "igr")}
    rows = []
    points = [("mdr", w, h) for w in args.weights for h in (args.steps or [base.step])]
    points += [("igr", w, None) for w in args.igr_weights]
    for method, w, h in points:
        cfg = base.replace(methods=(method,), weights={**base.weights, method: w}, step=h or base.step)
        got = run_experiment(cfg, out / _name(method, w, h), **kw)["methods"][method]
        checks = claim_checks({**baseline, "mdr": got}) if method == "mdr" else None
        rows.append({"method": method, "weight": w, "step": h, **{k: got[k] for k in COLUMNS},
                     "claim": None if checks is None else {k: ok for k, (ok, _) in checks.items()}})
    save_json(out / "sweep.json", {"config": base.to_dict(), "baseline": baseline, "points": rows})
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| method | weight | step | " + " | ".join(COLUMNS) + " | claim checks passed |",
             "|---" * (len(COLUMNS) + 4) + "|"]
    for name, r in baseline.items():
        lines.append(f"| {name} (baseline) | {base.weights[name]:g} | - | " + " | ".join(fmt(r[k]) for k in COLUMNS) + " | |")
    for r in rows:
        passed = "" if r["claim"] is None else f"{sum(r['claim'].values())}/{len(r['claim'])}" + (
            "" if all(r["claim"].values()) else " (fails: " + ", ".join(k for k, ok in r["claim"].items() if not ok) + ")")
        step = "-" if r["step"] is None else f"{r['step']:g}"
        lines.append(f"| {r['method']} | {r['weight']:g} | {step} | "
                     + " | ".join(fmt(r[k]) for k in COLUMNS) + f" | {passed} |")
    text = "\n".join(lines) + "\n"
    (out / "sweep.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
