"""results.json (means over seeds), results_seeds.json (every run) and the markdown table."""
from __future__ import annotations

import math
from pathlib import Path

from .checkpoint import save_json
from .config import ExperimentConfig
from .evaluation import RESULT_KEYS

#: Column headers of the markdown table, with the direction in which each metric is better.
COLUMNS = {
    "clean_acc": "clean acc ↑", "leakage": "leakage ↓", "leakage_paper": "leakage (paper units) ↓",
    "leakage_topk": "top-5% on null ↓", "insertion_auc": "insertion AUC ↑", "insertion_auc_paper": "insertion (paper units) ↑",
    "insertion_auc_rom": "insertion, ratio of means ↑", "insertion_auc_prob": "insertion, probability ↑",
    "pgd_linf_acc": "PGD-Linf acc ↑", "pgd_l2_acc": "PGD-L2 acc ↑", "topk_intersection": "top-k ∩ ↑",
    "kendall_tau": "Kendall τ ↑", "spearman": "Spearman ↑", "cosine": "cosine ↑", "density_shift": "density shift ↓",
    "worst_group_acc": "worst-group acc ↑", "acc_patch_disagrees": "acc, patch disagrees ↑", "step_time_s": "step ms",
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


#: The paper's Figure 1 on BlockMNIST (vanilla, gradient-norm regularisation, theirs) and our rows for them.
PAPER_FIGURE1 = {"none": ("vanilla", 3.602, 107.5), "igr": ("gradient norm", 3.583, 101.5),
                 "mdr": ("marginal density (theirs)", 0.959, 126.9)}


def summarise(cfg: ExperimentConfig, results: list[dict]) -> dict:
    """The results.json object: per-scheme means over seeds of the metrics; the config gains the
    image shape (C, H, W) the models saw."""
    schemes = {}
    for scheme in cfg.schemes:
        runs = [r for r in results if r["scheme"] == scheme]
        schemes[scheme] = {k: _mean([r["metrics"][k] for r in runs]) for k in RESULT_KEYS}
    config = {**cfg.to_dict(), "image_shape": results[0]["image_shape"]}
    return {"experiment": cfg.experiment, "config": config, "schemes": schemes}


def per_seed(cfg: ExperimentConfig, results: list[dict]) -> dict:
    out = {"experiment": cfg.experiment, "runs": [], "std_over_seeds": {}}
    for r in results:
        out["runs"].append({"scheme": r["scheme"], "seed": r["seed"], **r["metrics"], **r["extra"]})
    for scheme in cfg.schemes:
        runs = [r for r in results if r["scheme"] == scheme]
        out["std_over_seeds"][scheme] = {k: _std([r["metrics"][k] for r in runs]) for k in RESULT_KEYS}
    return out


def _fmt(key: str, v: float | None, sd: float | None) -> str:
    if v is None:
        return "n/a"
    if key == "step_time_s":
        return f"{1000 * v:.1f}"
    text = f"{v:.3f}"
    return text + (f" ± {sd:.3f}" if sd is not None else "")


def markdown_table(summary: dict, seeds: dict | None = None) -> str:
    """A GitHub markdown table, one row per scheme (± is the std over seeds when there are several)."""
    lines = ["| scheme | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for scheme, row in summary["schemes"].items():
        sds = (seeds or {}).get("std_over_seeds", {}).get(scheme, {})
        cells = [_fmt(k, row[k], sds.get(k) if k != "step_time_s" else None) for k in COLUMNS]
        lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    cfg = summary["config"]
    weights = ", ".join(f"{m}={cfg['weights'][m]:g}" for m in summary["schemes"] if m != "none")
    lines.append("")
    shape = "x".join(str(d) for d in cfg["image_shape"])
    estimators = ", ".join(f"{m}={cfg['estimators'][m]}" for m in summary["schemes"] if m != "none") or "-"
    lines.append(f"{summary['experiment']} on {cfg['dataset']} ({shape} images, split {cfg['split']}): model "
                 f"{cfg['model']} ({cfg['activation']}, width {cfg['width']}), {cfg['epochs']} epochs, seeds "
                 f"{cfg['seeds']}, weights {weights or '-'}, estimators {estimators}, step {cfg['step']}, "
                 f"attribution {cfg['attribution']} on {cfg['eval_samples']} images.")
    return "\n".join(lines) + "\n"


def paper_markdown(summary: dict) -> str:
    """Side-by-side table of our feature leakage and insertion AUC (paper units) against Figure 1."""
    rows = [(m, *PAPER_FIGURE1[m]) for m in PAPER_FIGURE1 if m in summary["schemes"]]
    if not rows:
        return ""
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    steps = summary["config"]["insertion_pixels"]
    lines = ["", "Against the paper's Figure 1 (BlockMNIST; leakage: sum of min-max-normalised |attribution| on "
             f"the null block; insertion: {steps} one-pixel steps, y = max(0, z_t / z_t(x)), dx = 1):", "",
             "| paper row | ours | paper leakage ↓ | our leakage ↓ | paper insertion AUC ↑ | our insertion AUC ↑ "
             "| our clean acc |", "|---|---|---:|---:|---:|---:|---:|"]
    for scheme, name, leak, auc in rows:
        r = summary["schemes"][scheme]
        lines.append(f"| {name} | {scheme} | {leak:.3f} | {fmt(r['leakage_paper'], '.3f')} | {auc:.1f} | "
                     f"{fmt(r['insertion_auc_paper'], '.1f')} | {fmt(r['clean_acc'], '.3f')} |")
    for scheme in summary["schemes"]:
        if scheme not in PAPER_FIGURE1:
            r = summary["schemes"][scheme]
            lines.append(f"| - | {scheme} | - | {fmt(r['leakage_paper'], '.3f')} | - | "
                         f"{fmt(r['insertion_auc_paper'], '.1f')} | {fmt(r['clean_acc'], '.3f')} |")
    return "\n".join(lines) + "\n"


def claim_checks(schemes: dict) -> dict | None:
    """mdr against none and igr on the means over seeds, in paper units, as information (the verdicts
    come from paired intervals: experiments.claims). None when a needed scheme or metric is missing.
    Each entry: (holds, comparison)."""
    if not all(m in schemes for m in ("none", "igr", "mdr")):
        return None
    n, i, m = schemes["none"], schemes["igr"], schemes["mdr"]
    needed = ("leakage_paper", "insertion_auc_paper", "clean_acc")
    if any(r[k] is None for r in (n, i, m) for k in needed):
        return None
    gap = m["clean_acc"] - n["clean_acc"]
    return {
        "leakage_paper, mdr / none": (m["leakage_paper"] < n["leakage_paper"],
                                      f"{m['leakage_paper']:.3f} / {n['leakage_paper']:.3f} = "
                                      f"{m['leakage_paper'] / n['leakage_paper']:.2f}; the paper's one image: "
                                      f"{PAPER_FIGURE1['mdr'][1] / PAPER_FIGURE1['none'][1]:.2f}"),
        "leakage_paper < igr": (m["leakage_paper"] < i["leakage_paper"],
                                f"{m['leakage_paper']:.3f} vs {i['leakage_paper']:.3f}"),
        "insertion_auc_paper > none": (m["insertion_auc_paper"] > n["insertion_auc_paper"],
                                       f"{m['insertion_auc_paper']:.1f} vs {n['insertion_auc_paper']:.1f}"),
        "clean acc at most 1 point below none": (gap >= -0.01, f"{m['clean_acc']:.3f} vs {n['clean_acc']:.3f} "
                                                                  f"({100 * gap:+.1f} points)"),
    }


def claim_markdown(checks: dict | None) -> str:
    if checks is None:
        return ""
    lines = ["", "mdr vs none / igr on the means over seeds (information only: the claims table decides "
             "from paired intervals):", ""]
    lines += [f"- {'holds' if ok else 'does not hold'}: {name} ({detail})" for name, (ok, detail) in checks.items()]
    return "\n".join(lines) + "\n"


def write_reports(cfg: ExperimentConfig, results: list[dict], out: Path) -> dict:
    out = Path(out)
    summary = summarise(cfg, results)
    seeds = per_seed(cfg, results)
    save_json(out / "results.json", summary)
    save_json(out / "results_seeds.json", seeds)
    text = markdown_table(summary, seeds)
    if cfg.experiment == "blockmnist":  # the claim is stated for BlockMNIST feature leakage
        text += paper_markdown(summary) + claim_markdown(claim_checks(summary["schemes"]))
    (out / "results.md.tmp").write_text(text)
    (out / "results.md.tmp").replace(out / "results.md")
    return summary
