"""The claims' confound reports: raw and scale-free verdicts side by side (scale.py) and the attack-budget
curves (budgets.py), each table and sentence generated from the rows of claims.claim_rows.

- ``both_verdicts_table``: one line per claim metric and scale-free twin, per comparator the raw cell and
  the scale-free cell (mean paired difference [95% interval] verdict); a metric that is scale-free by
  construction shows its raw verdict in both.
- ``survival_sentences``: per scale-dependent claim and comparator, whether the claim's raw SUPPORTED
  verdicts stay SUPPORTED on every scale-free twin ("survives") or not, read from the verdicts only.
- ``budget_tables`` / ``budget_sentence`` / ``budget_figure``: the attribution attack and its matched
  uniform sign noise at each L-inf budget, PGD accuracy at each budget, means per scheme and the
  subject's paired differences; the sentence says at which budgets the subject's attributions are more
  or less robust than the comparator's (more: SUPPORTED on at least one similarity of the attack and
  CONTRADICTED on none; less: the reverse; mixed: both; indistinguishable: all INCONCLUSIVE).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..attacks import SIMILARITIES
from .scale import SCALE_KEYS
from .budgets import ATTACK_BUDGETS, PGD_L2_BUDGETS, PGD_LINF_BUDGETS, key
from .claims import seed_values
from .figures import _save, plt
from .intervals import comparison_cell

ARROW = {1: "↑", -1: "↓"}
NOT_A_CLAIM = "logit scale (not a claim)"


def both_verdicts_table(rows: list[dict], subject: str) -> str:
    comparators = [c["comparator"] for c in rows[0]["raw"]] if rows else []
    lines = ["| claim | metric | scale-free metric | "
             + " | ".join(f"{subject} − {c}: raw | {subject} − {c}: scale-free" for c in comparators) + " |",
             "|---|---|---|" + "---|---|" * len(comparators)]
    for r in rows:
        margin = f", margin {r['margin']:g}" if r["margin"] else ""
        if r["claim"] == NOT_A_CLAIM:  # the scale itself: differences, no verdict
            cells = [c for raw in r["raw"] for c in (comparison_cell(raw).rsplit(" ", 1)[0], "")]
            lines.append(f"| {r['claim']} | {r['experiment']}: {r['metric']} | — | " + " | ".join(cells) + " |")
            continue
        twin = "(scale-free already)" if r["twin"] is None else f"{r['twin']} {ARROW[r['better']]}"
        cells = []
        for raw, free in zip(r["raw"], r["scale_free"]):
            cells += [comparison_cell(raw), "same" if r["twin"] is None else comparison_cell(free)]
        lines.append(f"| {r['claim']} | {r['experiment']}: {r['metric']} {ARROW[r['better']]}{margin} | {twin} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def survival(rows: list[dict]) -> list[dict]:
    """Per scale-dependent claim and comparator: ``{"claim", "comparator", "raw": [(metric, verdict)],
    "scale_free": [(twin, verdict)], "survives": bool | None}``; survives is None when no raw verdict of
    the claim was SUPPORTED (nothing to survive), else whether every twin of every raw-SUPPORTED metric is
    SUPPORTED."""
    out: dict = {}
    for r in rows:
        if r["twin"] is None:
            continue
        for raw, free in zip(r["raw"], r["scale_free"]):
            entry = out.setdefault((r["claim"], raw["comparator"]), {"claim": r["claim"], "comparator": raw["comparator"],
                                                                   "raw": {}, "scale_free": [], "kept": []})
            entry["raw"][r["metric"]] = raw["verdict"]
            entry["scale_free"].append((r["twin"], free["verdict"]))
            if raw["verdict"] == "SUPPORTED":
                entry["kept"].append(free["verdict"] == "SUPPORTED")
    return [{**{k: e[k] for k in ("claim", "comparator", "scale_free")}, "raw": list(e["raw"].items()),
             "survives": all(e["kept"]) if e["kept"] else None} for e in out.values()]


def survival_sentences(rows: list[dict], subject: str) -> str:
    """The generated verdict of the scale-free rows, one bullet per scale-dependent claim and comparator."""
    lines = []
    for s in survival(rows):
        raw = ", ".join(f"{m} {v}" for m, v in s["raw"])
        free = ", ".join(f"{m} {v}" for m, v in s["scale_free"])
        if s["survives"] is None:
            word = "was not SUPPORTED raw, so there is nothing to survive"
        else:
            word = "SURVIVES the logit scale" if s["survives"] else "does NOT survive the logit scale"
        lines.append(f"- \"{s['claim']}\", {subject} against {s['comparator']}: {word} (raw: {raw}; scale-free: {free}).")
    if lines:
        lines.append("- Every other claim's metric is scale-free by construction (accuracies, shares of attribution, "
                     "rank and cosine similarities of maps, ratios of logits): its verdict is the raw one.")
    return "\n".join(lines) + "\n"


def _mean(records: list[dict], scheme: str, weight: float, metric: str) -> float | None:
    vals = list(seed_values(records, "blockmnist", scheme, weight, metric).values())
    return None if not vals or any(v is None for v in vals) else math.fsum(vals) / len(vals)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def budget_tables(rows: list[dict], records: list[dict], weights: dict, schemes: list[str], subject: str,
                  comparator: str = "none") -> str:
    """The attack table (per budget and similarity: every scheme's mean under the attack / under noise,
    and subject − comparator under both) and the PGD curve table."""
    cell = {(r["metric"], c["comparator"]): c for r in rows for c in r["versus"]}
    lines = ["Attribution attack (a) and uniform sign noise of the same L-inf size (n): mean over seeds per scheme; "
             f"{subject} − {comparator} paired over seeds [95% interval] verdict (↑: higher is more robust).", "",
             "| L-inf budget | measure | " + " | ".join(f"{m} a / n" for m in schemes)
             + f" | {subject} − {comparator}, attack | {subject} − {comparator}, noise |",
             "|---:|---|" + "---:|" * len(schemes) + "---|---|"]
    for eps in ATTACK_BUDGETS:
        for m in (*SIMILARITIES, "unit_l2"):
            arrow = "↓" if m == "unit_l2" else "↑"
            means = [f"{_num(_mean(records, meth, weights[meth], key(m, eps)))} / "
                     f"{_num(_mean(records, meth, weights[meth], key(m + '_random', eps)))}" for meth in schemes]
            diffs = [cell.get((key(x, eps), comparator)) for x in (m, m + "_random")]
            lines.append(f"| {eps:g} | {m} {arrow} | " + " | ".join(means) + " | "
                         + " | ".join("n/a" if d is None else comparison_cell(d) for d in diffs) + " |")
    lines += ["", "Unit-norm maps (the same similarities on maps divided by their L2 norm; they are invariant to a "
              "positive factor per map, so they equal the raw ones): the largest absolute difference from the raw "
              f"value over every scheme, seed and budget is {_unit_gap(records):.2g}.", "",
              "PGD accuracy at each budget (the robustness curve): mean over seeds per scheme; "
              f"{subject} − {comparator} paired over seeds.", "",
              "| norm | budget | " + " | ".join(schemes) + f" | {subject} − {comparator} |",
              "|---|---:|" + "---:|" * len(schemes) + "---|"]
    for norm, budgets in (("linf", PGD_LINF_BUDGETS), ("l2", PGD_L2_BUDGETS)):
        for eps in budgets:
            k = key(f"pgd_{norm}_acc", eps)
            d = cell.get((k, comparator))
            lines.append(f"| {norm} | {eps:g} | " + " | ".join(_num(_mean(records, m, weights[m], k)) for m in schemes)
                         + f" | {'n/a' if d is None else comparison_cell(d)} |")
    return "\n".join(lines) + "\n"


def scale_table(records: list[dict], weights: dict, schemes: list[str]) -> str:
    """Every scale.SCALE_KEYS quantity: its mean over seeds per scheme."""
    lines = ["| quantity | " + " | ".join(schemes) + " |", "|---|" + "---:|" * len(schemes)]
    for k in SCALE_KEYS:
        lines.append(f"| {k} | " + " | ".join(_num(_mean(records, m, weights[m], k)) for m in schemes) + " |")
    return "\n".join(lines) + "\n"


def _unit_gap(records: list[dict]) -> float:
    gaps = [abs(r["scores"][key(m + "_unit", eps)] - r["scores"][key(m, eps)]) for r in records
            for eps in ATTACK_BUDGETS for m in SIMILARITIES
            if r["scores"].get(key(m, eps)) is not None and r["scores"].get(key(m + "_unit", eps)) is not None]
    return max(gaps, default=float("nan"))


def budget_verdicts(rows: list[dict], comparator: str = "none", suffix: str = "") -> dict[float, str]:
    """{budget: "more" | "less" | "mixed" | "indistinguishable"}: the subject's attributions against the
    comparator's under the attack (``suffix`` "_random": under the noise), from the verdicts of the
    SIMILARITIES (module docstring)."""
    measures = {m + suffix for m in SIMILARITIES}
    out = {}
    for eps in ATTACK_BUDGETS:
        verdicts = [c["verdict"] for r in rows if r["kind"] == "attack" and r["eps"] == eps and r["measure"] in measures
                    for c in r["versus"] if c["comparator"] == comparator]
        if not verdicts:
            continue
        up, down = "SUPPORTED" in verdicts, "CONTRADICTED" in verdicts
        out[eps] = "mixed" if up and down else "more" if up else "less" if down else "indistinguishable"
    return out


def budget_sentence(rows: list[dict], subject: str, comparator: str = "none") -> str:
    words = {"more": "more robust", "less": "less robust", "mixed": "more robust on some measures and less on others",
             "indistinguishable": "indistinguishable (every interval includes 0)"}
    sentences = []
    for suffix, what in (("", "Under the attribution attack"), ("_random", "Under uniform sign noise of the same size")):
        got = budget_verdicts(rows, comparator, suffix)
        if got:
            parts = [f"{words[w]} at L-inf {', '.join(f'{e:g}' for e, v in got.items() if v == w)}"
                     for w in words if w in got.values()]
            sentences.append(f"{what}, {subject}'s saliency maps compared with {comparator}'s are " + "; ".join(parts) + ".")
    if not sentences:
        return ""
    return (" ".join(sentences) + f" (From the verdicts of the {len(SIMILARITIES)} similarities, paired over seeds; more "
            "robust: SUPPORTED on at least one and CONTRADICTED on none; less robust: the reverse.)\n")


def budget_figure(records: list[dict], weights: dict, schemes: list[str], path: Path) -> None:
    """Per similarity: mean over seeds against the L-inf budget per scheme, attack solid, noise dashed;
    then PGD accuracy against the L-inf and the L2 budget."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    panels = [*SIMILARITIES, "pgd_linf_acc", "pgd_l2_acc"]
    for ax, measure in zip(axes.flat, panels):
        budgets = {"pgd_linf_acc": PGD_LINF_BUDGETS, "pgd_l2_acc": PGD_L2_BUDGETS}.get(measure, ATTACK_BUDGETS)
        for i, m in enumerate(schemes):
            colour = f"C{i}"
            for suffix, style in (("", "-"), ("_random", "--")):
                if suffix and measure.startswith("pgd"):
                    continue
                pts = [(e, _mean(records, m, weights[m], key(measure + suffix, e))) for e in budgets]
                pts = [(e, v) for e, v in pts if v is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", ms=3, color=colour,
                            label=f"{m}{' noise' if suffix else ''}")
        ax.set_xlabel("L2 budget" if measure == "pgd_l2_acc" else "L-inf budget")
        ax.set_title(measure + ("" if measure.startswith("pgd") else " (solid: attack, dashed: noise)"), fontsize=9)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def wall_line(records: list[dict], stem: str) -> str:
    """The compute of one confound file (``stem``: "scale" or "budgets") over the models that have it."""
    walls = sorted(r["scores"][f"{stem}_wall_s"] for r in records if r["scores"].get(f"{stem}_wall_s") is not None)
    if not walls:
        return ""
    return (f"Compute: {len(walls)} models, median {statistics.median(walls):.0f} s wall each, "
            f"{math.fsum(walls):.0f} s in all (OUT/blockmnist/runs/*/{stem}.json, key wall_s).\n")


def scale_free_part(plan, claims: dict, out: Path, write) -> list[str]:
    """The claims table's scale-free part (empty without scale-free rows): the side-by-side table and the
    survival sentences; also writes OUT/scale_free.md (both, and the scale quantities per scheme)."""
    rows = claims.get("scale_free")
    if not rows:
        return []
    cfg = plan.experiment_config("blockmnist")
    schemes = [m for m in plan.config.schemes if any(r["scheme"] == m for r in claims["records"])]
    text = "\n".join([
        f"Raw and scale-free verdicts side by side (seeds {list(cfg.seeds)}, {cfg.eval_samples} evaluation images). "
        "Scale-free: after temperature scaling (one temperature per model, "
        "fitted by NLL on the test images that no attack, insertion or density row reads) and, for the density "
        "shift, also in the model's own units (the shift over the standard deviation of log p(x) over the "
        "evaluated clean test images); see margreg_fast/kit/experiments/scale.py.", "",
        both_verdicts_table(rows, plan.subject), "Which claims survive the logit scale (generated from the verdicts):", "",
        survival_sentences(rows, plan.subject)])
    write(out / "scale_free.md", "\n".join([text, f"Scale quantities, means over seeds {list(cfg.seeds)}:", "",
                                            scale_table(claims["records"], cfg.weights, schemes),
                                            wall_line(claims["records"], "scale")]))
    return ["", text]


def budget_part(plan, claims: dict, out: Path, write) -> list[str]:
    """The claims report's budget section (empty without budget rows): OUT/budgets.md and
    OUT/figures/budgets.png."""
    rows = claims.get("budgets")
    if not rows:
        return []
    cfg = plan.experiment_config("blockmnist")
    schemes = [m for m in plan.config.schemes if any(r["scheme"] == m for r in claims["records"])]
    budget_figure(claims["records"], cfg.weights, schemes, out / "figures" / "budgets.png")
    text = write(out / "budgets.md", "\n".join([
        f"Attack budgets, seeds {list(cfg.seeds)}, {cfg.eval_samples} evaluation images: the top-k attribution attack "
        f"(k {cfg.topk}, {cfg.attack_steps} steps) at each L-inf budget beside uniform sign noise of the same size "
        f"(every pixel ±eps, clipped to [0, 1]), and PGD ({cfg.pgd_steps} steps, random start) at each budget; see "
        "margreg_fast/kit/experiments/budgets.py. Figure: figures/budgets.png.", "",
        budget_sentence(rows, plan.subject), budget_tables(rows, claims["records"], cfg.weights, schemes, plan.subject),
        wall_line(claims["records"], "budgets")]))
    return ["## Attack budgets", "", text]
