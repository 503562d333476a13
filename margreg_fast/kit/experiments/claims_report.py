"""Write the claims: OUT/claims.json, OUT/claims.md (and its parts, see write_claims),
OUT/figures/frontier.png and the BlockMNIST reports (OUT/blockmnist/results.{json,md},
results_seeds.json and figures/, figure1.png the single-image panel).

claims.md holds, in order: the claims table (mdr against none, igr and joint: mean paired difference,
95% bootstrap interval, verdict), the count that reads "marginal beats conditional / joint" from it,
every seed's value of every claim metric (the spread), the single-image panel next to the dataset
means, the cheaper forms of mdr (mdr@F, mdr%K against mdr and none), adversarial training against mdr and
its cheaper forms when the plan trains it (adversarial.md), mdr against mdr-exact (estimator.md),
the weight frontier, the shortcut frontier of the two spurious tasks (shortcut_frontier.md and
figures/shortcut_frontier.png, when the plan has one), and the compute the points took
(compute.md); with the confound rows (claims --scale-free / --budgets) also the raw and scale-free
verdicts side by side in the claims table (scale_free.md) and the attack budgets (budgets.md,
figures/budgets.png), written by confounds_report.py. Every number in it is
computed here from the records of claims.run_claims; nothing is typed in.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .checkpoint import save_json
from .claims import (CLAIMS, EXACT_TWIN, KEEP_MARGIN, SPURIOUS_SCHEMES, ClaimsPlan, frontier_rows, seed_values,
                     shortcut_frontier_rows)
from .config import ExperimentConfig, parse_scheme
from .figures import _save, plt, write_figures
from .intervals import CONFIDENCE, RESAMPLES, comparison_cell, paired
from .report import write_reports
from .confounds_report import budget_part, scale_free_part

ARROW = {1: "↑", -1: "↓"}


def number_cell(v: float | None) -> str:
    """A table cell for a number: 3 significant digits, "n/a" for a missing one."""
    return "n/a" if v is None else f"{v:.3g}"


def _metric(row: dict) -> str:
    margin = f", margin {row['margin']:g}" if row["margin"] else ""
    return f"{row['metric']} {ARROW[row['better']]}{margin}"


def claims_table(claims: list[dict], subject: str) -> str:
    comparators = [c["comparator"] for c in claims[0]["versus"]] if claims else []
    lines = ["| claim | metric | "
             + " | ".join(f"{subject} − {c}" for c in comparators) + " |",
             "|---|---|" + "---|" * len(comparators)]
    for row in claims:
        lines.append(f"| {row['claim']} | {row['experiment']}: {_metric(row)} | "
                     + " | ".join(comparison_cell(c) for c in row["versus"]) + " |")
    return "\n".join(lines) + "\n"


def beats_summary(claims: list[dict], subject: str) -> str:
    """The claim "marginal beats conditional / joint", read from the igr and joint columns."""
    lines = []
    for other in ("igr", "joint"):
        cells = [(row["metric"], c) for row in claims for c in row["versus"]
                 if c["comparator"] == other and not row["margin"]]  # non-inferiority rows claim no gain
        if not cells:
            continue
        count = {v: [m for m, c in cells if c["verdict"] == v] for v in ("SUPPORTED", "CONTRADICTED", "INCONCLUSIVE")}
        lines.append(f"- {subject} better than {other}: SUPPORTED on {len(count['SUPPORTED'])} of {len(cells)} rows "
                     f"({', '.join(count['SUPPORTED']) or '-'}); CONTRADICTED on {len(count['CONTRADICTED'])} "
                     f"({', '.join(count['CONTRADICTED']) or '-'}); INCONCLUSIVE on {len(count['INCONCLUSIVE'])}.")
    return "\n".join(lines) + "\n"


def spread_table(records: list[dict], weights: dict, schemes: list[str], seeds: list[int],
                 task_weights: dict | None = None) -> str:
    """Every seed's value of every claim metric, per scheme (seed order), and the mean; ``task_weights``
    ({experiment: weights}) where an experiment's weights are not ``weights``."""
    lines = ["| metric | scheme | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|---|" + "---:|" * (len(seeds) + 1)]
    for claim in CLAIMS:
        for m in schemes:
            w = (task_weights or {}).get(claim.experiment, weights).get(m)
            vals = seed_values(records, claim.experiment, m, w, claim.metric, set(seeds))
            if not vals:
                continue
            got = [vals.get(s) for s in seeds]
            mean = None if any(v is None for v in got) else math.fsum(got) / len(got)
            lines.append(f"| {claim.experiment}: {claim.metric} | {m} | " + " | ".join(number_cell(v) for v in got)
                         + f" | {number_cell(mean)} |")
    return "\n".join(lines) + "\n"


def panel_table(results: list[dict], seed: int, schemes: list[str]) -> str:
    """The single image's leakage and insertion next to the dataset means over seeds (paper units)."""
    by = {r["scheme"]: r for r in results if r["seed"] == seed}
    rows = [m for m in schemes if m in by and by[m].get("panel")]
    if not rows:
        return ""
    panel = by[rows[0]]["panel"]
    lines = [f"Single image: test image {panel['index']} of seed {seed}'s split, the first whose label is "
             f"{panel['label']}; the models of seed {seed}. Dataset: means over every seed and evaluated image.", "",
             "| scheme | leakage_paper, this image | leakage_paper, dataset mean | insertion AUC (paper units), "
             "this image | insertion AUC (paper units), dataset mean |", "|---|---:|---:|---:|---:|"]
    for m in rows:
        runs = [r for r in results if r["scheme"] == m]
        mean = {k: None if any(r["metrics"][k] is None for r in runs) else
                math.fsum(r["metrics"][k] for r in runs) / len(runs) for k in ("leakage_paper", "insertion_auc_paper")}
        p = by[m]["panel"]
        lines.append(f"| {m} | {number_cell(p.get('leakage_paper'))} | {number_cell(mean['leakage_paper'])} | "
                     f"{number_cell(p['insertion_auc_paper'])} | {number_cell(mean['insertion_auc_paper'])} |")
    return "\n".join(lines) + "\n"


def cheaper_section(cheaper: list[dict], subject: str) -> str:
    if not cheaper:
        return ""
    lines = [f"{subject}@F penalises a random fraction F of each batch; {subject}%K penalises every K-th step at K "
             f"times the weight (lazy regularisation); both at {subject}'s weight and estimator. Each row compares "
             f"the cheaper form with {subject} and with none on the same seeds. \"Keeps the leakage cut\": its "
             f"leakage_paper − {subject}'s SUPPORTED as at most {KEEP_MARGIN:g} x {subject}'s cut (none − {subject}, "
             "mean over seeds) worse. The runs' own step times are not a cost measure (they ran at different loads "
             "of a shared machine): benchmarks/results/train_step_claims.md times every form on this model in one "
             "interleaved run.", ""]
    for f in cheaper:
        m, keep = f["scheme"], f["keeps_leakage_cut"]
        lines.append(f"**{m}**: keeps the leakage cut: {keep['verdict']} ({m} − {subject} {comparison_cell(keep)}; margin "
                     f"{keep['margin']:.3g}).")
        lines.append("")
        lines.append(claims_table(f["rows"], m))
    return "\n".join(lines)


def adversarial_section(claims: dict, plan: ClaimsPlan, cfg: ExperimentConfig) -> str:
    """The adversarial-training comparators: how they were trained, then the claim rows and every cheaper
    form's rows narrowed to the columns against them (the same cells as in the tables above)."""
    schemes = plan.adversarial
    if not schemes:
        return ""
    pick = lambda rows: [{**r, "versus": [c for c in r["versus"] if c["comparator"] in schemes]} for r in rows]  # noqa: E731
    epochs = ", ".join(f"{m} {cfg.epochs_of(m)}" for m in (*plan.config.schemes, *plan.cheaper_schemes))
    lines = [f"Adversarial training as the comparator: pgd-at trains on the L-inf PGD batch (Madry et al. 2018), "
             f"trades on CE + beta KL(p(x) || p(x_adv)) (Zhang et al. 2019, beta = its weight), both attacking at "
             f"the PGD row's budget eps {cfg.pgd_linf_eps:g} with {cfg.pgd_steps} steps of 2.5 eps / steps "
             f"(margreg_fast/kit/adversarial.py). Epochs per scheme: {epochs}. The training costs per step are in "
             "benchmarks/results/train_step_adversarial.md; a run with fewer epochs for the adversarial schemes "
             "(--scheme-epochs) compares them at matched cost.", "",
             claims_table(pick(claims["claims"]), plan.subject)]
    for f in claims["cheaper"]:
        lines += [claims_table(pick(f["rows"]), f["scheme"])]
    return "\n".join(lines)


def frontier_table(rows: list[dict]) -> str:
    lines = ["| scheme | weight | clean acc | Δ acc vs none [95% CI] | leakage_paper | Δ leakage_paper vs none [95% CI] |",
             "|---|---:|---:|---|---:|---|"]
    for r in rows:
        d = {k: r.get(f"{k}_vs_none") for k in ("clean_acc", "leakage_paper")}
        fmt = {k: "" if d[k] is None or d[k]["mean"] is None else
               f"{d[k]['mean']:+.3g}" + ("" if d[k]["low"] is None else f" [{d[k]['low']:+.3g}, {d[k]['high']:+.3g}]")
               for k in d}
        mark = " (selected)" if r["selected"] and r["scheme"] != "none" else ""
        lines.append(f"| {r['scheme']} | {r['weight']:g}{mark} | {number_cell(r['clean_acc'])} | {fmt['clean_acc']} | "
                     f"{number_cell(r['leakage_paper'])} | {fmt['leakage_paper']} |")
    return "\n".join(lines) + "\n"


def _delta(d: dict | None) -> str:
    if d is None or d["mean"] is None:
        return ""
    return f"{d['mean']:+.3g}" + ("" if d["low"] is None else f" [{d['low']:+.3g}, {d['high']:+.3g}]")


def shortcut_table(rows: list[dict]) -> str:
    """The shortcut frontier (claims.shortcut_frontier_rows): worst-group accuracy and accuracy where the
    shortcut disagrees with the label, per task, scheme and weight."""
    lines = ["| task | scheme | weight | clean acc | worst-group acc | Δ vs none [95% CI] | acc where the shortcut "
             "disagrees | Δ vs none [95% CI] |", "|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        mark = " (selected)" if r["selected"] and r["scheme"] != "none" else ""
        lines.append(f"| {r['experiment']} | {r['scheme']} | {r['weight']:g}{mark} | {number_cell(r['clean_acc'])} | "
                     f"{number_cell(r['worst_group_acc'])} | {_delta(r.get('worst_group_acc_vs_none'))} | "
                     f"{number_cell(r['acc_patch_disagrees'])} | {_delta(r.get('acc_patch_disagrees_vs_none'))} |")
    return "\n".join(lines) + "\n"


def shortcut_figure(rows: list[dict], path: Path, seeds: list[int]) -> None:
    """Per spurious task, accuracy where the shortcut disagrees against worst-group accuracy, one line per
    scheme through its weights (labels), none as a star."""
    tasks = list(dict.fromkeys(r["experiment"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for scheme in dict.fromkeys(r["scheme"] for r in rows if r["experiment"] == task):
            pts = [r for r in rows if (r["experiment"], r["scheme"]) == (task, scheme)
                   and r["worst_group_acc"] is not None and r["acc_patch_disagrees"] is not None]
            if not pts:
                continue
            style = {"marker": "*", "ms": 12, "color": "k", "ls": ""} if scheme == "none" else {"marker": "o", "ms": 4}
            line = ax.plot([r["worst_group_acc"] for r in pts], [r["acc_patch_disagrees"] for r in pts], label=scheme,
                           **style)
            for r in pts:
                ax.annotate(f"{r['weight']:g}", (r["worst_group_acc"], r["acc_patch_disagrees"]), fontsize=6,
                            color=line[0].get_color(), xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("worst-group accuracy")
        ax.set_ylabel("accuracy where the shortcut disagrees")
        ax.set_title(f"{task}: seeds {seeds} (labels: weights)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def frontier_figure(rows: list[dict], path: Path, seeds: list[int]) -> None:
    """leakage_paper against clean accuracy, one line per scheme through its weights; the bars are the
    95% paired intervals against none, placed at none's mean (mean(none) + interval of the difference).
    The cheaper forms of mdr (mdr@F, mdr%K), if any, get a second panel next to mdr."""
    none = next(r for r in rows if r["scheme"] == "none")
    schemes = list(dict.fromkeys(r["scheme"] for r in rows if r["scheme"] != "none"))
    cheaper = [m for m in schemes if parse_scheme(m)[1:] != (1.0, 1)]
    panels = [("penalties", [m for m in schemes if m not in cheaper])]
    if cheaper:
        panels.append(("less penalty work (mdr@F, mdr%K)", [m for m in schemes if m in cheaper or m == "mdr"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.8), squeeze=False)
    for ax, (title, shown) in zip(axes[0], panels):
        ax.plot(none["clean_acc"], none["leakage_paper"], "k*", ms=12, label="none")
        for scheme in shown:
            _frontier_line(ax, [r for r in rows if r["scheme"] == scheme], none, scheme)
        ax.set_xlabel("clean accuracy")
        ax.set_ylabel("leakage_paper (lower is better)")
        ax.set_title(f"{title}: BlockMNIST, seeds {seeds} (labels: weights)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def _frontier_line(ax, rows: list[dict], none: dict, label: str) -> None:
    pts = [r for r in rows if r["clean_acc"] is not None and r["leakage_paper"] is not None]
    if not pts:
        return
    xerr = [[_err(r, none, "clean_acc", lo) for r in pts] for lo in (True, False)]
    yerr = [[_err(r, none, "leakage_paper", lo) for r in pts] for lo in (True, False)]
    line = ax.errorbar([r["clean_acc"] for r in pts], [r["leakage_paper"] for r in pts], xerr=xerr, yerr=yerr,
                       marker="o", ms=4, capsize=2, lw=1, label=label)
    for r in pts:
        ax.annotate(f"{r['weight']:g}", (r["clean_acc"], r["leakage_paper"]), fontsize=6,
                    color=line[0].get_color(), xytext=(3, 3), textcoords="offset points")


def _err(row: dict, none: dict, key: str, low: bool) -> float:
    d = row.get(f"{key}_vs_none")
    if d is None or d["low"] is None:
        return 0.0
    at = none[key] + (d["low"] if low else d["high"])
    return max(0.0, row[key] - at) if low else max(0.0, at - row[key])


#: The per-seed quantities that say why attribution robustness comes out as it does (evaluation.py):
#: each similarity under the attack and under random noise of the same size, top-k at the top 5% of
#: pixels, how concentrated and how large the clean saliency maps are, and the logit scale.
DIAGNOSIS = ("topk_intersection", "topk_intersection_random", "topk_intersection_wide", "topk_intersection_wide_random",
             "kendall_tau", "kendall_tau_random", "spearman", "spearman_random", "cosine", "cosine_random",
             "topk_mass", "saliency_l2", "target_logit_mean")


def diagnosis_table(results: list[dict], schemes: list[str], subject: str) -> str:
    """Mean over seeds of every DIAGNOSIS quantity per scheme, and subject − none paired over seeds."""
    value = lambda r, k: r["metrics"].get(k, r["extra"].get(k))  # noqa: E731
    per = {m: {r["seed"]: r for r in results if r["scheme"] == m} for m in schemes}
    shown = [m for m in schemes if per[m]]
    lines = ["| quantity | " + " | ".join(shown) + f" | {subject} − none [95% CI] |", "|---|" + "---:|" * len(shown) + "---|"]
    for k in DIAGNOSIS:
        cells = []
        for m in shown:
            got = [value(r, k) for r in per[m].values()]
            cells.append(number_cell(None if any(v is None for v in got) else math.fsum(got) / len(got)))
        d = paired({s: value(r, k) for s, r in per.get(subject, {}).items()},
                   {s: value(r, k) for s, r in per.get("none", {}).items()})
        diff = "n/a" if d.mean is None else f"{d.mean:+.3g}" + ("" if d.low is None else f" [{d.low:+.3g}, {d.high:+.3g}]")
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def write_claims(plan: ClaimsPlan, claims: dict, out: Path) -> str:
    """Write everything listed in the module docstring; return the text of claims.md, which is the
    concatenation of its parts, each also written on its own (claims_table.md, claims_seeds.md,
    figure1.md, cheaper.md, estimator.md, frontier.md, compute.md) so that documents can include them verbatim."""
    out = Path(out)
    cfg: ExperimentConfig = plan.experiment_config("blockmnist")
    full_schemes = [*plan.config.schemes, *plan.cheaper_schemes]
    first = cfg.seeds[0]  # the per-scheme reports and figures need every scheme's run of the first seed
    done = [m for m in full_schemes if any((r["scheme"], r["seed"]) == (m, first) for r in claims["results"])]
    if done:
        report_cfg = cfg.replace(schemes=tuple(done))
        results = [r for r in claims["results"] if r["scheme"] in done]
        write_reports(report_cfg, results, out / "blockmnist")
        write_figures(report_cfg, results, out / "blockmnist" / "figures")
    frontier = frontier_rows(plan, claims["records"]) if plan.grid and not plan.shortcuts_only else []
    shortcut = shortcut_frontier_rows(plan, claims["records"])
    save_json(out / "claims.json", {k: v for k, v in claims.items() if k != "results"} | {"frontier": frontier}
              | ({"shortcut_frontier": shortcut} if shortcut else {}))
    seeds = list(cfg.seeds)
    weights = ", ".join(f"{m}={cfg.weights[m]:g}" for m in full_schemes if m != "none")
    if plan.shortcut_weights or plan.shortcuts_only:  # each task at its own weights
        weights = "; ".join(
            f"{e}: " + ", ".join(f"{m}={plan.experiment_config(e).weights[m]:g}" for m in shown if m != "none")
            for e in plan.experiments for shown in [full_schemes if e == "blockmnist" else SPURIOUS_SCHEMES])
    table = _write(out / "claims_table.md", "\n".join([
        f"Claims table: {'the spurious tasks' if plan.shortcuts_only else 'BlockMNIST'}"
        f"{' and the spurious variant' if plan.spurious and not plan.shortcuts_only else ''}"
        f"{' (accuracies and leakage only)' if plan.light else ''}, seeds {seeds}, {cfg.eval_samples} evaluation images, "
        f"weights {weights}. Each cell: mean over seeds of the paired difference ({plan.subject} − comparator, same "
        f"seed, same data), its {CONFIDENCE:.0%} percentile bootstrap interval over seeds ({RESAMPLES} resamples), "
        "and the verdict (SUPPORTED: the interval excludes 0, or the margin, on the claimed side; CONTRADICTED: on "
        "the other side; INCONCLUSIVE: otherwise).", "",
        claims_table(claims["claims"], plan.subject), "Marginal beats conditional / joint (rows without a margin):", "",
        beats_summary(claims["claims"], plan.subject), *scale_free_part(plan, claims, out, _write)]))
    parts = [f"# Claims of the paper, measured (seeds {seeds}, {cfg.eval_samples} evaluation images)", "", table,
             "## Every seed", "",
             _write(out / "claims_seeds.md", spread_table(claims["records"], cfg.weights, full_schemes, seeds, {
                 t: plan.experiment_config(t).weights for t in plan.shortcut_experiments}))]
    if claims["results"]:  # the parts that need full evaluations
        parts += ["## Figure 1, like for like", "",
                  _write(out / "figure1.md", panel_table(claims["results"], seeds[0], ["none", "igr", "mdr"])),
                  "## Attribution robustness, taken apart", "",
                  _write(out / "attribution_robustness.md", "\n".join([
                      f"Saliency maps before and after the top-k attack (eps {cfg.attack_eps:g}, k {cfg.topk}, "
                      f"{cfg.attack_steps} steps) and under random ±eps noise (_random); _wide: top-k at the top "
                      f"{cfg.leakage_top_fraction:g} of pixels; topk_mass: share of a clean map's |saliency| in its "
                      "top k; saliency_l2: its L2 norm; target_logit_mean: the mean target logit. Means over seeds.", "",
                      diagnosis_table(claims["results"], full_schemes, plan.subject)]))]
    parts += budget_part(plan, claims, out, _write)
    if claims["cheaper"]:
        parts += ["## Less penalty work: fractions of each batch, lazy steps", "", _write(out / "cheaper.md", cheaper_section(
            claims["cheaper"], plan.subject))]
    if plan.adversarial and claims["claims"]:
        parts += ["## Adversarial training", "", _write(out / "adversarial.md", adversarial_section(claims, plan, cfg))]
    if claims.get("estimator"):
        parts += ["## The default estimator against the exact penalty", "", _write(out / "estimator.md", "\n".join([
            f"{plan.subject} (the library's default estimator, {cfg.estimators[plan.subject]}, step {cfg.step}) against "
            f"{EXACT_TWIN} (the same penalty by double backprop) at {plan.subject}'s weight "
            f"{cfg.weights[plan.subject]:g}, model {cfg.model} with {cfg.activation}, on the same seeds {list(cfg.seeds)}: "
            f"the paired difference ({plan.subject} − {EXACT_TWIN}), "
            "its 95% bootstrap interval and the verdict read as for the claims (SUPPORTED: the default estimator's "
            "model is better on that row). Rows where both were measured.", "",
            claims_table(claims["estimator"], plan.subject)]))]
    if frontier:
        frontier_figure(frontier, out / "figures" / "frontier.png", list(plan.frontier_seeds))
        parts += [f"## Weight frontier (seeds {list(plan.frontier_seeds)})", "", _write(out / "frontier.md", "\n".join([
            f"Weight frontier on BlockMNIST, seeds {list(plan.frontier_seeds)}: means over those seeds; differences "
            "against none paired over them, with their 95% percentile bootstrap intervals.", "",
            frontier_table(frontier)]))]
    if shortcut:
        shortcut_figure(shortcut, out / "figures" / "shortcut_frontier.png", list(plan.frontier_seeds))
        parts += [f"## Shortcut frontier: robust square and non-robust texture (seeds {list(plan.frontier_seeds)})", "",
                  _write(out / "shortcut_frontier.md", "\n".join([
                      f"Weight frontier on the two spurious tasks, seeds {list(plan.frontier_seeds)}: the robust "
                      "shortcut (spurious: a class-coded 2x2 square at intensity 1) and the non-robust one (texture: "
                      f"a class-coded ±{cfg.spurious_amplitude:g} texture over the whole image), each agreeing with the "
                      f"label on {cfg.spurious_agreement:g} of the training images and independent of it at test. Means "
                      "over the seeds; differences against none paired over them, with their 95% percentile bootstrap "
                      "intervals; (selected): the weight chosen on the task's own validation split.", "",
                      shortcut_table(shortcut)]))]
    parts += ["## Compute", "", _write(out / "compute.md", compute_section(claims["records"], claims["invocations"]))]
    if claims.get("missing"):
        parts += ["## Not finished", "", f"{len(claims['missing'])} planned runs had not finished (or had only their "
                  "accuracies and leakage scored, by a `--light` run) when this report was written (`--report-only`); "
                  "the rows above use what was finished:", "",
                  "\n".join(f"- {m['experiment']} {m['scheme']} weight {m['weight']:g} seed {m['seed']}"
                            f"{' (full evaluation)' if m['full'] else ''}" for m in claims["missing"]), ""]
    return _write(out / "claims.md", "\n".join(parts))


def compute_section(records: list[dict], invocations: list[dict]) -> str:
    """What the plan cost: the wall time of every command that trained into this directory
    (claims.INVOCATIONS_NAME), then the finished points' own recorded wall seconds (claims.WALL_NAME) per
    experiment and kind of point, and how many points were run before times were recorded."""
    timed = [r for r in records if r.get("wall_s") is not None]
    groups: dict = {}
    for r in timed:
        key = (r["experiment"], r["scheme"], "full" if r["full"] else "light")
        groups.setdefault(key, []).append(r["wall_s"])
    lines = []
    if invocations:
        lines += [f"Commands that trained into this directory ({len(invocations)}, "
                  f"{math.fsum(i['wall_s'] for i in invocations):.0f} s wall in all; each resumes the last):", "",
                  "| started (UTC) | wall s | jobs | threads | planned points | unfinished after it |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {i['started']} | {i['wall_s']:.0f} | {i['jobs']} | {i['threads']} | {i['points']} | "
                  f"{i['unfinished']} |" for i in invocations]
        lines.append("")
    lines += [f"Wall time recorded per point (one worker process each; points run in parallel share the "
             f"machine): {len(timed)} of {len(records)} finished points, {math.fsum(r['wall_s'] for r in timed) / 3600:.2f} "
             "worker-hours in all. A point resumed from an earlier command counts only the work done after the "
             "times began to be recorded.", "",
             "| experiment | scheme | evaluation | points | median wall s | total wall s |", "|---|---|---|---:|---:|---:|"]
    for (experiment, scheme, kind), walls in sorted(groups.items()):
        lines.append(f"| {experiment} | {scheme} | {kind} | {len(walls)} | {statistics.median(walls):.0f} | "
                     f"{math.fsum(walls):.0f} |")
    return "\n".join(lines) + "\n"


def stability_markdown(reference: dict, rerun: dict, reference_name: str) -> str:
    """For every claim row and comparator in both: the reference's mean, interval and verdict, the
    rerun's mean and verdict, and whether the rerun's mean lies inside the reference interval."""
    ref = {(r["metric"], c["comparator"]): c for r in reference["claims"] for c in r["versus"]}
    lines = [f"Rerun against {reference_name}: paired mean differences (subject − comparator).", "",
             "| metric | comparator | reference mean [95% CI] | reference verdict | rerun mean [95% CI] | rerun verdict "
             "| rerun mean inside the reference interval |", "|---|---|---|---|---|---|---|"]
    for row in rerun["claims"]:
        for c in row["versus"]:
            r = ref.get((row["metric"], c["comparator"]))
            if r is None or r["low"] is None or c["mean"] is None:
                continue
            inside = "yes" if r["low"] <= c["mean"] <= r["high"] else "no"
            lines.append(f"| {row['metric']} | {c['comparator']} | {_interval(r)} | {r['verdict']} | {_interval(c)} | "
                         f"{c['verdict']} | {inside} |")
    return "\n".join(lines) + "\n"


def _interval(c: dict) -> str:
    return f"{c['mean']:+.3g}" + ("" if c["low"] is None else f" [{c['low']:+.3g}, {c['high']:+.3g}]")
