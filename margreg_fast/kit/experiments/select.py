"""Choose the penalty weight of igr, joint and mdr on a validation split (never on test).

    margreg-fast select blockmnist --grid 1 3 10 30 --out runs/select \\
        --write margreg_fast/kit/configs/blockmnist_weights.json [any `experiment` option]

Every scheme gets the same grid and the same budget: one model per (scheme, weight, seed), trained
with the experiment's settings on the training split minus a seeded ``val_fraction`` of it, scored on
that held-out part (``split="validation"``). Plain CE ("none") is trained once per seed as the
reference. The rule, fixed in advance and the same for every scheme:

    among the weights whose mean validation accuracy is at least none's minus ``ACC_BUDGET`` (1 point),
    take the one with the lowest mean validation ``leakage_paper`` (Integrated Gradients by default);
    if no weight keeps the accuracy, take the most accurate one.

On a spurious task (``select spurious``, the robust square or ``--spurious-patch texture``) the validation
split is drawn as its test split is, the shortcut independent of the label, and the rule is the same with
the task's own measure of reliance on its uninformative feature in place of the leakage:
``disagree_error``, the error on the validation images whose shortcut names another class than the label.

``mdr-exact`` (the reference row) gets mdr's weight. The output file holds the chosen weights, the
grid, the rule and every validation score, and is what ``make demo`` reads (``--weights-file``).
Each point is checkpointed and its scores are cached under a digest of the settings it depends on
(``ExperimentConfig.run_key``),
so a rerun resumes and a rerun with, e.g., another mdr estimator retrains only the mdr points.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import metrics
from ..attribution import attribute
from ..paper_metrics import insertion_auc_paper, leakage_paper
from .checkpoint import finite_or_none, load_json, save_json
from .config import ExperimentConfig
from .datasets import build_datasets
from .parallel import run_tasks
from .runner import deterministic
from .training import train_run

SELECTED_SCHEMES = ("igr", "joint", "mdr")
ACC_BUDGET = 0.01
SCORE_KEYS = ("clean_acc", "leakage_paper", "insertion_auc_paper", "disagree_error")
#: The score the rule minimises among the accurate weights, per experiment.
RELIANCE = {"blockmnist": "leakage_paper", "spurious": "disagree_error"}


def validation_scores(model: torch.nn.Module, val, cfg: ExperimentConfig) -> dict:
    """clean_acc on the whole validation split; leakage_paper and insertion_auc_paper on its first
    ``eval_samples`` images, with ``cfg.attribution``; None where undefined (see evaluation)."""
    if cfg.experiment == "spurious":  # group = label * 10 + shortcut class (data.make_spurious / make_texture)
        conflict = val.group % 10 != val.y
        return {"clean_acc": metrics.accuracy(model, val.x, val.y), "leakage_paper": None, "insertion_auc_paper": None,
                "disagree_error": 1.0 - metrics.accuracy(model, val.x[conflict], val.y[conflict])}
    n = min(cfg.eval_samples, len(val.y))
    x, y = val.x[:n], val.y[:n]
    attr = attribute(model, x, y, method=cfg.attribution, n_steps=cfg.ig_steps)
    scores = {"clean_acc": metrics.accuracy(model, val.x, val.y),
              "leakage_paper": leakage_paper(attr, val.null_mask[:n]),
              "insertion_auc_paper": insertion_auc_paper(model, x, attr, y, steps=cfg.insertion_pixels),
              "disagree_error": None}
    return {k: finite_or_none(v) for k, v in scores.items()}


def _point(cfg: ExperimentConfig, scheme: str, weight: float, seed: int, out: Path, quiet: bool) -> dict:
    """Validation scores of one (scheme, weight, seed), trained (or resumed) under OUT/runs, cached
    under a directory named by the point's ``run_key``."""
    point_cfg = cfg.replace(weights={**cfg.weights, scheme: weight})
    rdir = out / "runs" / f"{scheme}-w{weight:g}-seed{seed}-{point_cfg.run_key(scheme)}"
    if (rdir / "scores.json").exists():
        return load_json(rdir / "scores.json")
    with deterministic():
        train_set, val_set = build_datasets(point_cfg, seed)
        model = train_run(point_cfg, scheme, seed, train_set, rdir, quiet=quiet).model
        scores = validation_scores(model, val_set, point_cfg)
    save_json(rdir / "scores.json", scores)
    return scores


def choose(reference_acc: float, scores: dict[float, dict], key: str = "leakage_paper") -> float:
    """The weight picked by the rule of the module docstring from {weight: mean scores}, minimising ``key``."""
    fine = [w for w, s in scores.items() if s["clean_acc"] >= reference_acc - ACC_BUDGET]
    if fine:
        return min(fine, key=lambda w: (math.inf if scores[w][key] is None else scores[w][key], w))
    return max(scores, key=lambda w: (scores[w]["clean_acc"], -w))


def _mean_scores(runs: list[dict]) -> dict:
    """Mean over seeds per score; None where any seed's is undefined."""
    return {k: None if any(r[k] is None for r in runs) else math.fsum(r[k] for r in runs) / len(runs)
            for k in SCORE_KEYS}


def select_weights(cfg: ExperimentConfig, grid: list[float], out: Path, *, quiet: bool = False, jobs: int = 1) -> dict:
    """Run the selection for ``cfg`` (its split is forced to "validation"), ``jobs`` points at a time,
    and return the selection object (also written to OUT/selection.json and OUT/selection.md)."""
    if not grid or any(not w > 0 for w in grid) or len(set(grid)) != len(grid):
        raise ValueError(f"the grid must hold distinct positive weights, got {grid}")
    cfg = cfg.replace(split="validation", schemes=("none", *SELECTED_SCHEMES))
    out = Path(out)
    points = [("none", 0.0)] + [(m, w) for m in SELECTED_SCHEMES for w in grid]
    tasks = [(p, seed) for p in points for seed in cfg.seeds]
    scores = run_tasks(_point, [((cfg, m, w, seed, out, quiet or jobs > 1), {}) for (m, w), seed in tasks],
                       jobs=jobs, desc="select", quiet=quiet, names=[f"{m} w{w:g} seed {s}" for (m, w), s in tasks])
    raw: dict[tuple[str, float], list[dict]] = {p: [] for p in points}
    for (p, _), got in zip(tasks, scores):
        raw[p].append(got)
    reference = _mean_scores(raw[("none", 0.0)])
    table = {m: {w: _mean_scores(raw[(m, w)]) for w in grid} for m in SELECTED_SCHEMES}
    key = RELIANCE[cfg.experiment]
    chosen = {m: choose(reference["clean_acc"], table[m], key) for m in SELECTED_SCHEMES}
    chosen["mdr-exact"] = chosen["mdr"]
    selection = {
        "weights": chosen, "grid": list(grid),
        "rule": f"lowest mean validation {key} among weights within {ACC_BUDGET:g} of none's mean "
                f"validation accuracy (else the most accurate); mdr-exact takes mdr's weight",
        "reference_none": reference,
        "validation": {m: [{"weight": w, **table[m][w]} for w in grid] for m in SELECTED_SCHEMES},
        "config": cfg.to_dict(),
    }
    save_json(out / "selection.json", selection)
    (out / "selection.md").write_text(selection_markdown(selection))
    return selection


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def selection_markdown(selection: dict) -> str:
    """A table of every grid point's validation scores, the chosen weight of each scheme marked."""
    cfg, ref = selection["config"], selection["reference_none"]
    estimators = ", ".join(f"{m}={cfg['estimators'][m]}" for m in SELECTED_SCHEMES)
    key = RELIANCE[cfg["experiment"]]
    num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    shown = cfg["experiment"] == "blockmnist"  # the spurious tasks score no insertion
    insertion_header = " val insertion AUC (paper units) |" if shown else ""
    insertion = lambda r: f" {_fmt(r['insertion_auc_paper'])} |" if shown else ""  # noqa: E731
    task = "" if shown else f" of the spurious task (shortcut: {cfg['spurious_patch']})"
    lines = [f"Weight selection{task} on a validation split ({cfg['val_fraction']:g} of the training images, "
             f"seeds {cfg['seeds']}, {cfg['epochs']} epochs, {cfg['model']} {cfg['activation']} width {cfg['width']}, "
             f"estimators {estimators}, step {cfg['step']}).",
             f"Rule: {selection['rule']}.", "",
             f"| scheme | weight | val clean acc | val {key} |{insertion_header} chosen |",
             "|---|---:|---:|---:|" + "---:|" * bool(insertion_header) + "---|",
             f"| none | 0 | {ref['clean_acc']:.3f} | {num(ref[key])} |{insertion(ref)} |"]
    for scheme, rows in selection["validation"].items():
        for r in rows:
            mark = "**yes**" if r["weight"] == selection["weights"][scheme] else ""
            lines.append(f"| {scheme} | {r['weight']:g} | {r['clean_acc']:.3f} | {num(r[key])} |{insertion(r)} {mark} |")
    return "\n".join(lines) + "\n"
