"""results.json (means over seeds), results_seeds.json (every run) and the markdown table."""
from __future__ import annotations

import math
from pathlib import Path

from .checkpoint import save_json
from .config import ExperimentConfig
from .evaluation import RESULT_KEYS

#: Column headers of the markdown table, with the direction in which each metric is better.
COLUMNS = {
    "clean_acc": "clean acc ↑", "leakage": "leakage ↓", "insertion_auc": "insertion AUC ↑",
    "pgd_linf_acc": "PGD-Linf acc ↑", "pgd_l2_acc": "PGD-L2 acc ↑", "topk_intersection": "top-k ∩ ↑",
    "kendall_tau": "Kendall τ ↑", "density_shift": "density shift ↓", "worst_group_acc": "worst-group acc ↑",
    "step_time_s": "step ms",
}


def _mean(values: list) -> float | None:
    """Mean over seeds; None when the metric does not apply (None for any seed)."""
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)


def _std(values: list) -> float | None:
    if len(values) < 2 or any(v is None for v in values):
        return None
    m = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarise(cfg: ExperimentConfig, results: list[dict]) -> dict:
    """The results.json object: per-method means over seeds of the ten metrics."""
    methods = {}
    for method in cfg.methods:
        runs = [r for r in results if r["method"] == method]
        methods[method] = {k: _mean([r["metrics"][k] for r in runs]) for k in RESULT_KEYS}
    return {"experiment": cfg.experiment, "config": cfg.to_dict(), "methods": methods}


def per_seed(cfg: ExperimentConfig, results: list[dict]) -> dict:
    out = {"experiment": cfg.experiment, "runs": [], "std_over_seeds": {}}
    for r in results:
        out["runs"].append({"method": r["method"], "seed": r["seed"], **r["metrics"], **r["extra"]})
    for method in cfg.methods:
        runs = [r for r in results if r["method"] == method]
        out["std_over_seeds"][method] = {k: _std([r["metrics"][k] for r in runs]) for k in RESULT_KEYS}
    return out


def _fmt(key: str, v: float | None, sd: float | None) -> str:
    if v is None:
        return "n/a"
    if key == "step_time_s":
        return f"{1000 * v:.1f}"
    text = f"{v:.3f}"
    return text + (f" ± {sd:.3f}" if sd is not None else "")


def markdown_table(summary: dict, seeds: dict | None = None) -> str:
    """A GitHub markdown table, one row per method (± is the std over seeds when there are several)."""
    lines = ["| method | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, row in summary["methods"].items():
        sds = (seeds or {}).get("std_over_seeds", {}).get(method, {})
        cells = [_fmt(k, row[k], sds.get(k) if k != "step_time_s" else None) for k in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    cfg = summary["config"]
    weights = ", ".join(f"{m}={cfg['weights'][m]:g}" for m in summary["methods"] if m != "none")
    lines.append("")
    lines.append(f"{summary['experiment']}: model {cfg['model']}, {cfg['epochs']} epochs, seeds {cfg['seeds']}, "
                 f"weights {weights or '-'}, fd step {cfg['step']:g}, attribution {cfg['attribution']}.")
    return "\n".join(lines) + "\n"


def claim_checks(methods: dict) -> dict | None:
    """The paper's claim (issue 4, part 5) as pass/fail checks of mdr against none and igr.

    None when a needed method or metric is missing. Each entry: (passed, human-readable comparison).
    """
    if not all(m in methods for m in ("none", "igr", "mdr")):
        return None
    n, i, m = methods["none"], methods["igr"], methods["mdr"]
    needed = ("leakage", "clean_acc", "pgd_linf_acc", "pgd_l2_acc", "density_shift")
    if any(r[k] is None for r in (n, i, m) for k in needed):
        return None
    return {
        "leakage <= none/2": (m["leakage"] <= n["leakage"] / 2, f"{m['leakage']:.3f} vs {n['leakage'] / 2:.3f}"),
        "leakage < igr": (m["leakage"] < i["leakage"], f"{m['leakage']:.3f} vs {i['leakage']:.3f}"),
        "clean acc >= none - 0.03": (m["clean_acc"] >= n["clean_acc"] - 0.03,
                                     f"{m['clean_acc']:.3f} vs {n['clean_acc'] - 0.03:.3f}"),
        "PGD-Linf acc >= none": (m["pgd_linf_acc"] >= n["pgd_linf_acc"],
                                 f"{m['pgd_linf_acc']:.3f} vs {n['pgd_linf_acc']:.3f}"),
        "PGD-L2 acc >= none": (m["pgd_l2_acc"] >= n["pgd_l2_acc"], f"{m['pgd_l2_acc']:.3f} vs {n['pgd_l2_acc']:.3f}"),
        "density shift <= none": (m["density_shift"] <= n["density_shift"],
                                  f"{m['density_shift']:.3f} vs {n['density_shift']:.3f}"),
    }


def claim_markdown(checks: dict | None) -> str:
    if checks is None:
        return ""
    lines = ["", "Paper's claim (mdr vs none / igr, means over seeds):", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})" for name, (ok, detail) in checks.items()]
    return "\n".join(lines) + "\n"


def write_reports(cfg: ExperimentConfig, results: list[dict], out: Path) -> dict:
    out = Path(out)
    summary = summarise(cfg, results)
    seeds = per_seed(cfg, results)
    save_json(out / "results.json", summary)
    save_json(out / "results_seeds.json", seeds)
    text = markdown_table(summary, seeds)
    if cfg.experiment == "blockmnist":  # the claim is stated for BlockMNIST feature leakage
        text += claim_markdown(claim_checks(summary["methods"]))
    (out / "results.md.tmp").write_text(text)
    (out / "results.md.tmp").replace(out / "results.md")
    return summary
