"""Every claim of the paper on one instrument: the runs it needs, run resumably, and the paired rows.

    margreg-fast claims --seeds 0 1 2 3 4 --eval-samples 500 --weights-file WEIGHTS \\
        --fractions 0.5 0.25 0.125 --lazy 4 8 --grid 0.1 1 10 --frontier-seeds 0 1 2 3 4 --out runs/claims

The plan (``ClaimsPlan``) holds one BlockMNIST config (seeds, evaluation images, selected weights) and:

- full evaluation (evaluation.evaluate_model) of its ``schemes`` (none, igr, joint, mdr by default) and of
  the cheaper forms of mdr (``cheaper_schemes``: ``mdr@F`` for every fraction F, ``mdr%K`` for every lazy
  interval K), each at its selected weight, on every seed;
- the spurious-shortcut variant (``spurious_patch="overlay"``: 28x28 digits, a class-coded 2x2 square in
  the blank top rows agreeing with the label on 95% of training images and on 10% at test) for none,
  igr, joint and mdr on every seed, scored by ``light_scores`` (accuracies only);
- opt-in (``texture=True``): the non-robust shortcut, experiment "texture" (``spurious_patch="texture"``: a
  faint +-0.05 class-coded texture over the whole 28x28 image, data.make_texture), on the same schemes and seeds;
- the spurious tasks' weights (``shortcut_weights``): each chosen on that task's own validation split by
  select.py's rule (``margreg-fast select spurious ...``), else the BlockMNIST ones;
- opt-in (``shortcut_frontier=True``): the frontier over the ``grid`` weights of none / igr / joint / mdr on each
  spurious task on the ``frontier_seeds`` (worst-group accuracy, accuracy where the shortcut disagrees);
- the weight frontier: igr, joint, mdr, mdr-exact and every cheaper form at every ``grid`` weight and at
  its selected weight, on the ``frontier_seeds``, scored by ``light_scores`` (accuracy and leakage).
- with ``scale_free`` / ``budgets`` (``--scale-free``, ``--budgets``), on every fully evaluated BlockMNIST
  model of the ``schemes``: the scale-free scores (scale.py) and the attack-budget curves (budgets.py),
  computed from the finished model and cached in its run directory (SCALE_NAME, BUDGETS_NAME), giving the
  rows ``scale_free`` (each claim's raw and scale-free verdicts) and ``budgets``.
- opt-in, adversarial training (``pgd-at``, ``trades`` among the ``schemes``): fully evaluated on every seed
  and on the spurious variant like the comparators, and a comparator of every claim row and every
  cheaper form's rows (ADVERSARIAL_COMPARATORS; ``scheme_epochs`` trains them at matched cost).

Every point is one (experiment, scheme, weight, seed) run under ``OUT/<experiment>/runs/``, named by
``runner.run_dir``, so a point needed twice (a frontier point at the selected weight is a claims run)
trains once, an interrupted command resumes, and nothing already scored is recomputed. All points go
through one pool of ``jobs`` worker processes. The rows (claims.CLAIMS) compare mdr with each
comparator by paired differences over seeds (intervals.py); the report is in claims_report.py.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from .checkpoint import finite_or_none, load_json, save_json
from .config import ADVERSARIAL_SCHEMES, FRACTION_SEPARATOR, LAZY_SEPARATOR, ExperimentConfig
from .evaluation import LIGHT_KEYS, light_scores, marginal_penalty
from .intervals import Paired, paired, verdict
from .parallel import run_tasks
from .runner import RESULT_NAME, _datasets, _one_run, claim_output_dir, deterministic, run_dir
from .training import train_run
from .budgets import ATTACK_BUDGETS, ATTACK_MEASURES, LOWER_IS_BETTER, PGD_L2_BUDGETS, PGD_LINF_BUDGETS, budget_scores, key
from .scale import SCALE_FREE_TWINS, scale_free_scores

SUBJECT = "mdr"
COMPARATORS = ("none", "igr", "joint")
#: The subject's penalty by double backprop: the subject minus it, at the same weight and seeds, is the
#: difference the default estimator makes to the trained model (claim_rows' "estimator").
EXACT_TWIN = "mdr-exact"
#: The fully evaluated schemes by default: the subject and its comparators.
CLAIM_SCHEMES = ("none", "igr", "joint", "mdr")
SPURIOUS_SCHEMES = ("none", "igr", "joint", "mdr")
#: The spurious tasks and their shortcut (config.spurious_patch): the robust class-coded 2x2 square, the
#: non-robust class-coded texture.
SHORTCUT_PATCHES = {"spurious": "overlay", "texture": "texture"}
#: Per spurious task's frontier point: the accuracies it is read by.
SHORTCUT_KEYS = ("clean_acc", "worst_group_acc", "acc_patch_disagrees")
#: Methods of the frontier besides the cheaper forms (none is its reference point).
FRONTIER_SCHEMES = ("igr", "joint", "mdr", "mdr-exact")
#: "a cheaper form (mdr@F, mdr%K) keeps the leakage cut of mdr" when its leakage_paper minus mdr's is
#: SUPPORTED as at most this share of mdr's mean cut (none - mdr) worse: a non-inferiority margin fixed in advance.
KEEP_MARGIN = 0.2
SCORES_NAME = "scores.json"
#: Per run directory of the subject and EXACT_TWIN at the subject's weight: the trained model's exact
#: marginal penalty on the evaluated images ({"marginal_penalty": R}), the estimator comparison's extra row.
PENALTY_NAME = "penalty.json"
#: Per run directory: the wall seconds the commands that finished work on the point spent on it (summed
#: over resumptions; a command stopped mid-point adds nothing), so the plan's cost can be told from its outputs.
WALL_NAME = "wall.json"
#: In the output directory: one JSON line per command that trained (start, wall seconds, jobs, threads),
#: so the plan's wall time, resumptions included, can be told from its outputs.
INVOCATIONS_NAME = "invocations.jsonl"
#: Per run directory of a fully evaluated claim scheme (with ``--scale-free`` / ``--budgets``): the scale-free
#: scores (scale.py) and the budget curves (budgets.py), ``{"scores": {...}, "wall_s": seconds}``, computed
#: from the finished model after its evaluation, so that adding them trains nothing again.
SCALE_NAME = "scale.json"
BUDGETS_NAME = "budgets.json"
#: Adversarial training (config.ADVERSARIAL_SCHEMES), opt-in through ``--schemes``: when the plan's schemes
#: hold them they are trained like the comparators (full BlockMNIST evaluation and the spurious variant on
#: every seed), and every claim row, and every cheaper form's rows, compare with them too.
ADVERSARIAL_COMPARATORS = ADVERSARIAL_SCHEMES


@dataclass(frozen=True)
class Claim:
    """One row of the claims table: the paper's claim, measured by ``metric`` of ``experiment``;
    ``better`` is +1 where higher is better, -1 where lower is; ``margin`` > 0 makes it a
    non-inferiority claim (intervals.verdict)."""

    claim: str
    experiment: str
    metric: str
    better: int
    margin: float = 0.0


CLAIMS = (
    Claim("less feature leakage", "blockmnist", "leakage", -1),
    Claim("less feature leakage", "blockmnist", "leakage_paper", -1),
    Claim("less feature leakage", "blockmnist", "leakage_topk", -1),
    Claim("more faithful attribution (insertion, Figure 1)", "blockmnist", "insertion_auc_paper", 1),
    Claim("more faithful attribution (insertion, Figure 1)", "blockmnist", "insertion_auc_rom", 1),
    Claim("more faithful attribution (insertion, Figure 1)", "blockmnist", "insertion_auc_prob", 1),
    Claim("spurious correlation mitigated", "spurious", "worst_group_acc", 1),
    Claim("spurious correlation mitigated", "spurious", "acc_patch_disagrees", 1),
    Claim("non-robust (texture) shortcut mitigated", "texture", "worst_group_acc", 1),
    Claim("non-robust (texture) shortcut mitigated", "texture", "acc_patch_disagrees", 1),
    Claim("robust to pixel perturbations", "blockmnist", "pgd_linf_acc", 1),
    Claim("robust to pixel perturbations", "blockmnist", "pgd_l2_acc", 1),
    Claim("robust to input-gradient perturbations", "blockmnist", "topk_intersection", 1),
    Claim("robust to input-gradient perturbations", "blockmnist", "kendall_tau", 1),
    Claim("robust to input-gradient perturbations", "blockmnist", "spearman", 1),
    Claim("robust to input-gradient perturbations", "blockmnist", "cosine", 1),
    Claim("robust to density perturbations", "blockmnist", "density_shift", -1),
    Claim("clean accuracy kept (at most 1 point lower)", "blockmnist", "clean_acc", 1, 0.01),
)


#: Not a claim of the paper: what the penalty itself measures on the trained model (the estimator rows).
TRUE_PENALTY = Claim("smaller true penalty (exact R on the evaluated images)", "blockmnist", "marginal_penalty", -1)


@dataclass(frozen=True)
class ClaimsPlan:
    """What one ``claims`` command runs (module docstring). ``config`` is the BlockMNIST config; its
    ``schemes`` are the fully evaluated ones."""

    config: ExperimentConfig
    fractions: tuple[float, ...] = ()
    lazy: tuple[int, ...] = ()  # lazy intervals K: mdr%K, the penalty on every K-th step at K times the weight
    spurious: bool = True
    grid: tuple[float, ...] = ()
    frontier_seeds: tuple[int, ...] = ()
    subject: str = field(default=SUBJECT)
    light: bool = False  # score every point by light_scores only (accuracies and leakage: a cheap rerun)
    scale_free: bool = False  # also the scale-free scores of every fully evaluated claim scheme (scale.py)
    budgets: bool = False  # also the attack-budget curves of every fully evaluated claim scheme (budgets.py)
    texture: bool = False  # the non-robust shortcut's rows (experiment "texture")
    shortcut_frontier: bool = False  # the grid on the spurious tasks too
    shortcut_weights: dict = field(default_factory=dict)  # {"spurious" or "texture": {scheme: weight}}
    shortcuts_only: bool = False  # only the spurious tasks' points (their claims and frontier): a command of its own

    def __post_init__(self) -> None:
        if self.config.experiment != "blockmnist":
            raise ValueError(f"the claims' config is the BlockMNIST one, got experiment {self.config.experiment!r}")
        if self.subject not in self.config.schemes:
            raise ValueError(f"the claims compare {self.subject}, which is not among the schemes {self.config.schemes}")
        for f in self.fractions:
            if not 0.0 < f < 1.0:
                raise ValueError(f"fractions must lie in (0, 1), got {f}")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 2 for k in self.lazy) or len(set(self.lazy)) != len(self.lazy):
            raise ValueError(f"lazy intervals must be distinct integers >= 2, got {self.lazy}")
        if any(not w > 0 for w in self.grid) or len(set(self.grid)) != len(self.grid):
            raise ValueError(f"the grid must hold distinct positive weights, got {self.grid}")
        if bool(self.grid) != bool(self.frontier_seeds):
            raise ValueError("the frontier needs both a grid and frontier seeds (or neither)")
        if self.shortcut_frontier and not (self.grid and self.shortcut_experiments):
            raise ValueError("the shortcut frontier needs a grid, frontier seeds and a spurious task")
        if self.shortcuts_only and not self.shortcut_experiments:
            raise ValueError("shortcuts only needs a spurious task (the square or the texture)")
        unknown = set(self.shortcut_weights) - set(SHORTCUT_PATCHES)
        if unknown:
            raise ValueError(f"shortcut weights for unknown tasks {sorted(unknown)}; choose from {tuple(SHORTCUT_PATCHES)}")

    @property
    def adversarial(self) -> tuple[str, ...]:
        """The adversarial-training comparators among the plan's schemes (ADVERSARIAL_COMPARATORS)."""
        return tuple(m for m in self.config.schemes if m in ADVERSARIAL_COMPARATORS)

    @property
    def shortcut_experiments(self) -> tuple[str, ...]:
        """The spurious tasks of the plan: "spurious" (the robust 2x2 square), "texture" (the non-robust texture)."""
        return (("spurious",) if self.spurious else ()) + (("texture",) if self.texture else ())

    @property
    def experiments(self) -> tuple[str, ...]:
        return self.shortcut_experiments if self.shortcuts_only else ("blockmnist", *self.shortcut_experiments)

    @property
    def cheaper_schemes(self) -> tuple[str, ...]:
        """The subject doing less penalty work: on a fraction of each batch, then on every K-th step."""
        return (tuple(f"{self.subject}{FRACTION_SEPARATOR}{f:g}" for f in self.fractions)
                + tuple(f"{self.subject}{LAZY_SEPARATOR}{k}" for k in self.lazy))

    def experiment_config(self, experiment: str) -> ExperimentConfig:
        """The config of ``experiment`` with every scheme of the plan (so each has its weight)."""
        schemes = tuple(dict.fromkeys((*self.config.schemes, *self.cheaper_schemes, *FRONTIER_SCHEMES)))
        cfg = self.config.replace(schemes=schemes)
        if experiment in SHORTCUT_PATCHES:
            cfg = cfg.replace(experiment="spurious", spurious_patch=SHORTCUT_PATCHES[experiment],
                              weights={**cfg.weights, **self.shortcut_weights.get(experiment, {})})
        return cfg

    def points(self) -> list[tuple[str, str, float, int, bool]]:
        """Every (experiment, scheme, weight, seed, full evaluation) to run, each once, in the order of
        their worth should the command be stopped early: the claims table (BlockMNIST, then the
        spurious variant), the frontier of none / igr / joint / mdr / mdr-exact seed by seed, the
        cheaper forms at the selected weight, then their frontier seed by seed, then the shortcut frontier.
        With ``shortcuts_only``, the spurious tasks' points alone."""
        cfg = self.experiment_config("blockmnist")
        full = not self.light
        out = [("blockmnist", m, cfg.weights[m], s, full) for s in cfg.seeds for m in self.config.schemes]
        for task in self.shortcut_experiments:
            weights = self.experiment_config(task).weights
            out += [(task, m, weights[m], s, False) for s in cfg.seeds for m in (*SPURIOUS_SCHEMES, *self.adversarial)]
        cheaper_full = [("blockmnist", m, cfg.weights[m], s, full) for s in cfg.seeds for m in self.cheaper_schemes]
        done = {p[:4] for p in out + cheaper_full}

        def frontier(schemes):
            for s in self.frontier_seeds:
                for m in schemes:
                    for w in ((0.0,) if m == "none" else (*self.grid, cfg.weights[m])):
                        if ("blockmnist", m, w, s) not in done:
                            done.add(("blockmnist", m, w, s))
                            yield ("blockmnist", m, w, s, False)

        out += list(frontier(("none", *FRONTIER_SCHEMES)))
        out += cheaper_full
        out += list(frontier(self.cheaper_schemes))
        if self.shortcuts_only:
            out = [p for p in out if p[0] != "blockmnist"]
        for task in self.shortcut_experiments if self.shortcut_frontier else ():
            weights = self.experiment_config(task).weights
            out += [(task, m, w, s, False) for s in self.frontier_seeds for m in SPURIOUS_SCHEMES
                    for w in sorted({*((0.0,) if m == "none" else self.grid), weights[m]})
                    if (task, m, w, s) not in {p[:4] for p in out}]
        return out


def _point_config(plan: ClaimsPlan, experiment: str, scheme: str, weight: float) -> ExperimentConfig:
    cfg = plan.experiment_config(experiment)
    return cfg if scheme == "none" else cfg.replace(weights={**cfg.weights, scheme: weight})


def _light_point(cfg: ExperimentConfig, out: Path, seed: int, scheme: str, *, quiet: bool, device: str) -> dict:
    """light_scores of one run, trained (or resumed) in its run directory; cached in scores.json."""
    rdir = run_dir(out, cfg, scheme, seed)
    if (rdir / SCORES_NAME).exists():
        return load_json(rdir / SCORES_NAME)
    full = rdir / RESULT_NAME  # a full evaluation of the same run holds these numbers already
    if full.exists():
        return {k: load_json(full)["metrics"][k] for k in (*LIGHT_KEYS, "step_time_s")}
    with deterministic():
        train_set, eval_set = _datasets(cfg, seed)
        trained = train_run(cfg, scheme, seed, train_set, rdir, quiet=quiet, device=device)
        scores = {**light_scores(trained.model.cpu(), eval_set, cfg), "step_time_s": trained.median_step_time}
    save_json(rdir / SCORES_NAME, scores)
    return scores


def _run_point(plan: ClaimsPlan, out: Path, experiment: str, scheme: str, weight: float, seed: int, full: bool,
               quiet: bool, device: str, train: bool = True) -> dict | None:
    """The scores (and, if ``full``, the whole result) of one point; with ``train=False`` only what is
    already on disk: the full result, else the light scores, else None (a point not finished). The
    subject and EXACT_TWIN at the subject's weight also get their true penalty (``marginal_penalty``)."""
    cfg = _point_config(plan, experiment, scheme, weight)
    where = Path(out) / experiment
    rdir = run_dir(where, cfg, scheme, seed)
    if not train:
        if full and (rdir / RESULT_NAME).exists():
            result = load_json(rdir / RESULT_NAME)
            got = {"scores": result["metrics"], "result": result}
        elif (rdir / SCORES_NAME).exists():  # scored by light_scores only (e.g. by a --light run)
            got = {"scores": load_json(rdir / SCORES_NAME)}
        else:
            return None
    else:
        finished = (rdir / RESULT_NAME).exists() or (not full and (rdir / SCORES_NAME).exists())
        start = time.perf_counter()
        if full:
            result = _one_run(cfg, where, seed, scheme, train=True, evaluate=True, quiet=quiet, device=device)
            got = {"scores": result["metrics"], "result": result}
        else:
            got = {"scores": _light_point(cfg, where, seed, scheme, quiet=quiet, device=device)}
        if not finished:
            save_json(rdir / WALL_NAME, {"wall_s": (_wall(rdir) or 0.0) + time.perf_counter() - start})
    subject_weight = plan.experiment_config("blockmnist").weights[plan.subject]
    if (experiment, weight) == ("blockmnist", subject_weight) and scheme in (plan.subject, EXACT_TWIN):
        penalty = _true_penalty(cfg, rdir, scheme, seed, compute=train)
        if penalty is not None:
            got["scores"] = {**got["scores"], "marginal_penalty": penalty}
    if "result" in got and experiment == "blockmnist" and scheme in plan.config.schemes:
        confounds = _confound_scores(plan, cfg, rdir, scheme, seed, got["result"], compute=train)
        got["scores"] = {**got["scores"], **confounds}
        got["result"]["extra"] = {**got["result"]["extra"], **confounds}  # into results_seeds.json
    return {**got, "wall_s": _wall(rdir)}


def _confound_scores(plan: ClaimsPlan, cfg: ExperimentConfig, rdir: Path, scheme: str, seed: int, result: dict, *,
                     compute: bool) -> dict:
    """The scale-free scores and budget curves the plan asks for, of the finished run in ``rdir``, each
    cached in its file (SCALE_NAME, BUDGETS_NAME) with the wall seconds it took; only cached ones if not
    ``compute``."""
    out, model = {}, None
    for name, wanted in ((SCALE_NAME, plan.scale_free), (BUDGETS_NAME, plan.budgets)):
        path = rdir / name
        if not wanted or (not path.exists() and not compute):
            continue
        if not path.exists():
            start = time.perf_counter()
            with deterministic():
                train_set, eval_set = _datasets(cfg, seed)
                if model is None:
                    model = train_run(cfg, scheme, seed, train_set, rdir, quiet=True, allow_training=False).model.cpu()
                scores = (scale_free_scores(model, eval_set, cfg, result["metrics"]["density_shift"])
                          if name == SCALE_NAME else budget_scores(model, eval_set, cfg, seed))
            save_json(path, {"scores": {k: finite_or_none(v) for k, v in scores.items()},
                             "wall_s": time.perf_counter() - start})
        saved = load_json(path)
        out.update({**saved["scores"], f"{name.split('.')[0]}_wall_s": saved["wall_s"]})
    return out


def _true_penalty(cfg: ExperimentConfig, rdir: Path, scheme: str, seed: int, *, compute: bool) -> float | None:
    """evaluation.marginal_penalty of the finished run in ``rdir``, cached in its PENALTY_NAME (None if not
    cached and not ``compute``)."""
    path = rdir / PENALTY_NAME
    if path.exists() or not compute:
        return load_json(path)["marginal_penalty"] if path.exists() else None
    with deterministic():
        train_set, eval_set = _datasets(cfg, seed)
        model = train_run(cfg, scheme, seed, train_set, rdir, quiet=True, allow_training=False).model
        penalty = marginal_penalty(model.cpu(), eval_set, cfg)
    save_json(path, {"marginal_penalty": penalty})
    return penalty


def _wall(rdir: Path) -> float | None:
    """The wall seconds recorded for the point in ``rdir`` (WALL_NAME), None for a point run before they were."""
    return load_json(rdir / WALL_NAME)["wall_s"] if (rdir / WALL_NAME).exists() else None


def run_claims(plan: ClaimsPlan, out: Path, *, quiet: bool = False, device: str = "cpu", jobs: int = 1,
               train: bool = True) -> dict:
    """Run (or resume) every point of ``plan`` ``jobs`` at a time; return the claims object (points,
    full results, rows, and the points missing) that claims_report writes out. With ``train=False``
    nothing runs: the object is built from the points already finished, and ``missing`` lists the rest."""
    out = Path(out)
    started, start = datetime.now(timezone.utc), time.perf_counter()
    for experiment in plan.experiments:
        claim_output_dir(out / experiment, plan.experiment_config(experiment))
    points = plan.points()
    tasks = [((plan, out, *p, quiet or jobs > 1, device, train), {}) for p in points]
    got = run_tasks(_run_point, tasks, jobs=jobs if train else 1, desc="claims", quiet=quiet or not train,
                    names=[f"{e} {m} w{w:g} seed {s}" for e, m, w, s, _ in points])
    records = [{"experiment": e, "scheme": m, "weight": w, "seed": s, "full": "result" in g, "scores": g["scores"],
                "wall_s": g["wall_s"]}
               for (e, m, w, s, full), g in zip(points, got) if g is not None]
    results = [g["result"] for g in got if g is not None and "result" in g]
    missing = [{"experiment": e, "scheme": m, "weight": w, "seed": s, "full": full}
               for (e, m, w, s, full), g in zip(points, got) if g is None or (full and "result" not in g)]
    log = out / INVOCATIONS_NAME
    if train:
        with open(log, "a") as fh:
            fh.write(json.dumps({"started": started.isoformat(timespec="seconds"), "wall_s": time.perf_counter() - start,
                                 "jobs": jobs, "threads": torch.get_num_threads(), "points": len(points),
                                 "unfinished": len(missing)}) + "\n")
    invocations = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"plan": plan_dict(plan), "records": records, "results": results, "missing": missing,
            "invocations": invocations, **claim_rows(plan, records)}


def plan_dict(plan: ClaimsPlan) -> dict:
    return {"config": plan.config.to_dict(), "fractions": list(plan.fractions), "lazy": list(plan.lazy),
            "spurious": plan.spurious,
            "grid": list(plan.grid), "frontier_seeds": list(plan.frontier_seeds), "subject": plan.subject,
            "light": plan.light, "scale_free": plan.scale_free, "budgets": plan.budgets,
            "texture": plan.texture, "shortcut_frontier": plan.shortcut_frontier,
            "shortcut_weights": plan.shortcut_weights, "shortcuts_only": plan.shortcuts_only}


def seed_values(records: list[dict], experiment: str, scheme: str, weight: float, metric: str,
                seeds=None) -> dict[int, float | None]:
    """{seed: the metric} of one (experiment, scheme, weight), optionally on ``seeds`` only."""
    return {r["seed"]: r["scores"].get(metric) for r in records
            if (r["experiment"], r["scheme"], r["weight"]) == (experiment, scheme, weight)
            and (seeds is None or r["seed"] in seeds)}


def _compare(records, claim: Claim, subject: str, comparator: str, weights: dict, margin: float | None = None) -> dict:
    p = paired(seed_values(records, claim.experiment, subject, weights[subject], claim.metric),
               seed_values(records, claim.experiment, comparator, weights[comparator], claim.metric))
    margin = claim.margin if margin is None else margin
    return {"comparator": comparator, **p.to_dict(), "verdict": verdict(p, claim.better, margin), "margin": margin}


def _has(records, experiment: str, scheme: str) -> bool:
    return any(r["experiment"] == experiment and r["scheme"] == scheme for r in records)


def claim_rows(plan: ClaimsPlan, records: list[dict]) -> dict:
    """``{"claims": [...], "cheaper": [...], "estimator": [...]}``: per claim, the subject against each
    comparator that was run (adversarial training included); per cheaper scheme, the same rows against
    the subject, against none and against each adversarial scheme that was run,
    and whether it keeps the leakage cut (KEEP_MARGIN); per BlockMNIST claim measured on EXACT_TWIN at
    the subject's weight, the subject against it."""
    weights = plan.experiment_config("blockmnist").weights
    rows = []
    for claim in CLAIMS:
        if not _has(records, claim.experiment, plan.subject):
            continue
        task_weights = plan.experiment_config(claim.experiment).weights
        versus = [_compare(records, claim, plan.subject, c, task_weights) for c in (*COMPARATORS, *ADVERSARIAL_COMPARATORS)
                  if c != plan.subject and _has(records, claim.experiment, c)]
        rows.append({**claim.__dict__, "versus": versus})
    cheaper = []
    leak = next(c for c in CLAIMS if c.metric == "leakage_paper")
    for scheme in plan.cheaper_schemes:
        cut = _compare(records, leak, "none", plan.subject, weights)["mean"]  # none - mdr, > 0 if mdr cuts
        keep = _compare(records, leak, scheme, plan.subject, weights, margin=KEEP_MARGIN * max(cut or 0.0, 0.0))
        others = (plan.subject, "none", *(a for a in ADVERSARIAL_COMPARATORS if _has(records, "blockmnist", a)))
        per_claim = [{**c.__dict__, "versus": [_compare(records, c, scheme, other, weights) for other in others]}
                     for c in CLAIMS if c.experiment == "blockmnist"]
        cheaper.append({"scheme": scheme, "keeps_leakage_cut": keep, "cut": cut, "rows": per_claim})
    twin = {**weights, EXACT_TWIN: weights[plan.subject]}
    estimator = [{**c.__dict__, "versus": [cell]} for c in (*CLAIMS, TRUE_PENALTY) if c.experiment == "blockmnist"
                 for cell in [_compare(records, c, plan.subject, EXACT_TWIN, twin)] if cell["mean"] is not None]
    out = {"claims": rows, "cheaper": cheaper, "estimator": estimator}
    if plan.scale_free:
        out["scale_free"] = scale_free_rows(plan, records, rows)
    if plan.budgets:
        out["budgets"] = budget_rows(plan, records)
    return out


#: Not a claim: the logit scale itself, raw and after temperature scaling (the scale-free rows' context).
LOGIT_SCALE = (Claim("logit scale (not a claim)", "blockmnist", "target_logit_mean", 1),
               Claim("logit scale (not a claim)", "blockmnist", "target_logit_mean_T", 1))


def scale_free_rows(plan: ClaimsPlan, records: list[dict], rows: list[dict]) -> list[dict]:
    """Per claim row and each of its scale-free twins (scale.SCALE_FREE_TWINS; ``twin`` None where the
    metric is scale-free by construction, its verdict then the raw one): the raw comparisons (``raw``)
    and the twin's (``scale_free``), then the LOGIT_SCALE rows (their own metric in both)."""
    weights = plan.experiment_config("blockmnist").weights
    out = []
    for row in rows:
        for twin in SCALE_FREE_TWINS.get(row["metric"], (None,)):
            claim = Claim(row["claim"], row["experiment"], twin or row["metric"], row["better"], row["margin"])
            versus = row["versus"] if twin is None else [_compare(records, claim, plan.subject, c["comparator"], weights)
                                                           for c in row["versus"]]
            out.append({**{k: row[k] for k in ("claim", "experiment", "metric", "better", "margin")}, "twin": twin,
                        "raw": row["versus"], "scale_free": versus})
    for claim in LOGIT_SCALE:
        versus = [_compare(records, claim, plan.subject, c, weights) for c in COMPARATORS
                  if c != plan.subject and _has(records, claim.experiment, c)]
        if any(c["mean"] is not None for c in versus):
            out.append({**claim.__dict__, "twin": None, "raw": versus, "scale_free": versus})
    return out


def budget_rows(plan: ClaimsPlan, records: list[dict]) -> list[dict]:
    """Per budget and measure of budgets.py: the subject against each comparator, paired over seeds
    (``kind``: "attack" for the attribution attack and its noise, "pgd_linf" / "pgd_l2" for PGD)."""
    weights = plan.experiment_config("blockmnist").weights
    comparators = [c for c in COMPARATORS if c != plan.subject and _has(records, "blockmnist", c)]
    specs = [("attack", m, eps) for eps in ATTACK_BUDGETS for m in ATTACK_MEASURES]
    specs += [("pgd_linf", "pgd_linf_acc", eps) for eps in PGD_LINF_BUDGETS]
    specs += [("pgd_l2", "pgd_l2_acc", eps) for eps in PGD_L2_BUDGETS]
    out = []
    for kind, measure, eps in specs:
        claim = Claim(f"{kind} at {eps:g}", "blockmnist", key(measure, eps), -1 if measure in LOWER_IS_BETTER else 1)
        out.append({"kind": kind, "measure": measure, "eps": eps, "metric": claim.metric, "better": claim.better,
                    "versus": [_compare(records, claim, plan.subject, c, weights) for c in comparators]})
    return out


def shortcut_frontier_rows(plan: ClaimsPlan, records: list[dict]) -> list[dict]:
    """Per spurious task, scheme and weight of the shortcut frontier on the frontier seeds: the means of
    SHORTCUT_KEYS over those seeds and their paired differences against none."""
    seeds, out = set(plan.frontier_seeds), []
    for task in plan.shortcut_experiments if plan.shortcut_frontier else ():
        weights = plan.experiment_config(task).weights
        none = {k: seed_values(records, task, "none", 0.0, k, seeds) for k in SHORTCUT_KEYS}
        for scheme in SPURIOUS_SCHEMES:
            for w in sorted({*((0.0,) if scheme == "none" else plan.grid), weights[scheme]}):
                row = {"experiment": task, "scheme": scheme, "weight": w, "selected": w == weights[scheme]}
                for key in SHORTCUT_KEYS:
                    vals = seed_values(records, task, scheme, w, key, seeds)
                    got = [v for v in vals.values() if v is not None]
                    row[key] = sum(got) / len(got) if got and len(got) == len(vals) == len(seeds) else None
                    if scheme != "none":
                        row[f"{key}_vs_none"] = paired(vals, none[key]).to_dict()
                out.append(row)
    return out


def frontier_rows(plan: ClaimsPlan, records: list[dict]) -> list[dict]:
    """Per (scheme, weight) of the frontier on the frontier seeds: clean_acc and leakage_paper, their
    means and the paired differences against none (and the runs' median step time, a record of the
    load they ran under rather than a cost: the benchmarks measure cost)."""
    weights = plan.experiment_config("blockmnist").weights
    seeds = set(plan.frontier_seeds)
    out = []
    none = {k: seed_values(records, "blockmnist", "none", weights["none"], k, seeds) for k in ("clean_acc", "leakage_paper")}
    for scheme in ("none", *FRONTIER_SCHEMES, *plan.cheaper_schemes):
        for w in sorted({*(() if scheme == "none" else plan.grid), weights[scheme]}):
            row = {"scheme": scheme, "weight": w, "selected": w == weights[scheme]}
            for key in ("clean_acc", "leakage_paper", "step_time_s"):
                vals = seed_values(records, "blockmnist", scheme, w, key, seeds)
                got = [v for v in vals.values() if v is not None]
                row[key] = sum(got) / len(got) if got and len(got) == len(vals) else None
                if key in none and scheme != "none":
                    row[f"{key}_vs_none"] = paired(vals, none[key]).to_dict()
            out.append(row)
    return out


__all__ = ["ADVERSARIAL_COMPARATORS", "CLAIMS", "COMPARATORS", "EXACT_TWIN", "Claim", "ClaimsPlan", "KEEP_MARGIN", "Paired",
           "frontier_rows", "run_claims", "seed_values", "shortcut_frontier_rows"]
