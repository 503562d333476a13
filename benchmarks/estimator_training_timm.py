"""The default estimator judged by training real timm models, in fp32 and under bf16 autocast.

For each model, precision and seed, two twins train from the same initialisation on the same batches:
one with the default estimator, one with ``exact`` (or, where a model refuses exact, ``central`` with
its passes in fp32). A third, the noise floor, trains with the twin's estimator from the same
initialisation moved by 1e-6 (each parameter plus 1e-6 times a seeded standard normal draw): how far
two runs of one estimator end apart when their gradients differ by a rounding-sized amount, against
which the default's distance from its twin is read. Twin and noise run train in the default's
precision (``exact`` under bf16 autocast double-backpropagates like in fp32), and the table judges
each precision against the twin of its own precision: the estimator against exact in the precision
people train in. bf16 is also judged against the fp32 twin (a stricter comparison: that twin also
has fp32's CE, so the gap mixes bf16 training's own effect with the estimator's). ``--fp32-twin``
skips the bf16 twins and noise runs (the fp32 ones serve both comparisons); the run files are named
``MODEL-PRECISION-RUN-seedN.json`` by the precision each run trained in, so both kinds of run live
side by side. On held-out images all are measured the same way, in eval mode and fp32: the true
penalty (exact R, or central's in fp32 where exact is refused) and accuracy.

Models (random init, 10 classes):

* ``test_efficientnet``: timm's small EfficientNet (BatchNormAct2d with SiLU, squeeze-excite);
* ``test_efficientnet_relu``: the same EfficientNet (MBConv) blocks with ReLU, a BatchNorm ReLU net
  of timm's mobile family. The deeper mobile nets tried (mnasnet_small, mnasnet_050, mobilenetv2_050,
  mobileone_s0) stayed at chance accuracy in eval mode after 2,400 training images at 32 px (300
  steps of 8 or 150 of 16; mobilenetv2_050 even without the penalty, at lr 1e-3 and 1e-4), so they
  cannot tell two estimators apart, and 64 px or longer runs do not fit the shared CPU. At weight
  0.1 the ReLU EfficientNet reached 0.19 after 300 steps; the table trains it at weight 0.01.

Data: the kit's 5,000 real MNIST digits (``load_mnist5k``), zero-padded from 28x28 to 32x32 and
repeated to 3 channels, standardised to mean 0 and standard deviation 1 over the training images; a
fixed permutation (seed 0) puts 4,000 in training and holds 1,000 out. Training: Adam (lr 1e-3),
batch --batch, --steps steps, penalty weight --weight.

The table gives, per model, precision and twin, the per-seed values and, over the seeds, the mean
paired difference (default - twin; noise - twin) with its 95% percentile bootstrap interval
(``scipy.stats.bootstrap``, the kit's ``bootstrap_interval``), and a verdict on the bounds (true R
within 1.5x of the twin's, accuracy within a point): SUPPORTED where the median over seeds of
R(default) / R(twin) is at most 1.5 (one-sided: a smaller penalty is no failure; the per-seed max is
reported beside it) and the accuracy interval lies inside [-1, +1] points, CONTRADICTED where the
median ratio exceeds 1.5 or the interval lies wholly outside [-1, +1], INCONCLUSIVE otherwise. The
noise run gets the same accuracy verdict against the twin: unless it is SUPPORTED, two runs of exact
itself are not shown to end within a point at this seed count, and the bound is not testable there.

Each run writes one JSON file under benchmarks/results/estimator_training_timm/REGIME/ (REGIME:
``{steps}x{batch}-{schedule}-lr{lr}``; a rerun skips the runs whose file exists: the benchmark is
resumable); ``--table`` writes benchmarks/results/estimator_training_timm.{csv,md} from the files of
every regime, one group of rows per regime.

Two regimes are committed. The converged one, whose accuracies (0.910-0.960) spread little enough
between two runs of ``exact`` for the one-point bound to be testable at ten seeds:

    nice -n 5 python benchmarks/estimator_training_timm.py --models test_efficientnet --weight 0.1 \
        --steps 600 --batch 16 --lr 0.002 --schedule cosine --seeds 0 1 2 3 4 5 6 7 8 9
    nice -n 5 python benchmarks/estimator_training_timm.py --models test_efficientnet_relu --weight 0.01 \
        --steps 600 --batch 16 --lr 0.002 --schedule cosine --seeds 0 1 2 3 4 5 6 7 8 9

and the short one (300 steps of 8 at a constant lr 1e-3, accuracies 0.574-0.813), where two runs of
``exact`` 1e-6 apart end up to 5.8 points apart and the accuracy bound cannot be told from that noise;
its runs came from these commands (the same-precision bf16 twins were added to the --fp32-twin runs,
then seeds 5-9 for every row; one command per model without --fp32-twin over seeds 0-9 trains the
same set of runs):

    nice -n 10 python benchmarks/estimator_training_timm.py --models test_efficientnet --seeds 0 1 2 3 4 --fp32-twin
    nice -n 10 python benchmarks/estimator_training_timm.py --models test_efficientnet --precisions bf16 \
        --seeds 0 1 2 3 4
    nice -n 10 python benchmarks/estimator_training_timm.py --models test_efficientnet --seeds 5 6 7 8 9
    nice -n 10 python benchmarks/estimator_training_timm.py --models test_efficientnet_relu --weight 0.01 \
        --seeds 0 1 2 3 4 --fp32-twin
    nice -n 10 python benchmarks/estimator_training_timm.py --models test_efficientnet_relu --weight 0.01 \
        --precisions bf16 --seeds 0 1 2 3 4
    nice -n 10 python benchmarks/estimator_training_timm.py --models test_efficientnet_relu --weight 0.01 \
        --seeds 5 6 7 8 9
    python benchmarks/estimator_training_timm.py --table
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast import (DEFAULT_ESTIMATOR, MarginalDensityRegularizer, SecantWarning,  # noqa: E402
                          UnsupportedEstimatorError, marginal_density_penalty)
from margreg_fast.kit.data import load_mnist5k  # noqa: E402
from margreg_fast.kit.experiments.intervals import bootstrap_interval  # noqa: E402
from tests.timm_import import import_timm  # noqa: E402

DEFAULT_RUNS = report.RESULTS / "estimator_training_timm"
TRAIN, SIZE, LR = 4000, 32, 1e-3
PRECISIONS = ("fp32", "bf16")
#: the noise floor's twin: the twin's estimator from the initialisation moved by PERTURBATION
NOISE, PERTURBATION = "noise", 1e-6
#: the issue's bounds: true R within PENALTY_BOUND times the twin's, accuracy within ACCURACY_BOUND points
PENALTY_BOUND, ACCURACY_BOUND = 1.5, 1.0


def mnist32():
    """(x_train, y_train, x_test, y_test): the digits at 3x32x32, standardised by the training images."""
    images, labels = load_mnist5k()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    x = F.pad(images[order], (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    x = (x - x[:TRAIN].mean()) / x[:TRAIN].std()
    return x[:TRAIN], labels[order][:TRAIN], x[TRAIN:], labels[order][TRAIN:]


#: benchmark name -> (timm model, its options)
MODELS = {"test_efficientnet": ("test_efficientnet", {}),
          "test_efficientnet_relu": ("test_efficientnet", {"act_layer": "relu"})}


def build(name: str, seed: int, perturbed: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    timm_name, options = MODELS[name]
    model = import_timm().create_model(timm_name, pretrained=False, num_classes=10, **options).train()
    if perturbed:
        draws = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(PERTURBATION * torch.randn(p.shape, generator=draws))
    return model


def twin_method(name: str) -> str:
    """exact, or central where the model refuses exact (checked on one batch)."""
    model, x = build(name, 0), torch.randn(2, 3, SIZE, SIZE)
    try:
        marginal_density_penalty(model, x, estimator="exact")
    except UnsupportedEstimatorError:
        return "central"
    return "exact"


def true_penalty(model, x, method: str) -> float:
    """Mean R over x in eval mode, fp32, by ``method`` (exact, or central in fp32), in chunks of 64."""
    model.eval()
    values = [marginal_density_penalty(model, x[i:i + 64], estimator=method, reduction="sum").item()
              for i in range(0, x.shape[0], 64)]
    return sum(values) / x.shape[0]


def train_one(name: str, precision: str, run: str, method: str, seed: int, steps: int, batch: int, weight: float,
              data, lr: float = LR, schedule: str = "constant") -> dict:
    x_train, y_train, x_test, y_test = data
    model = build(name, seed, perturbed=run == NOISE)
    opt = torch.optim.Adam(model.parameters(), lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    reg = MarginalDensityRegularizer(weight, estimator=method)
    order = torch.Generator().manual_seed(seed)
    ratios, start = [], time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SecantWarning)
        perm = torch.randperm(TRAIN, generator=order)
        for step in range(steps):
            if (step + 1) * batch > perm.numel():
                perm = torch.cat([perm, torch.randperm(TRAIN, generator=order)])
            idx = perm[step * batch:(step + 1) * batch]
            torch.manual_seed(seed * 100_003 + step)  # rfd's signs, dropout: the same draws in every twin
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss, stats = reg(model, x_train[idx], y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            ratios.append(stats["secant_ratio"])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        model.eval()
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"model": name, "precision": precision, "run": run, "method": method, "seed": seed, "steps": steps,
            "batch": batch, "lr": lr, "schedule": schedule, "weight": weight, "true_penalty": None, "accuracy": accuracy,
            "secant_ratio_last50": statistics.median(r for r in ratios[-50:] if r == r),
            "warned": any(issubclass(w.category, SecantWarning) for w in caught), "train_seconds": seconds,
            "_model": model}


def regime(steps: int, batch: int, lr: float, schedule: str) -> str:
    """The training regime's name, which is also the folder of its run files: ``300x8-constant-lr0.001``."""
    return f"{steps}x{batch}-{schedule}-lr{lr:g}"


def run(args) -> None:
    runs = Path(args.runs) / regime(args.steps, args.batch, args.lr, args.schedule)
    runs.mkdir(parents=True, exist_ok=True)
    data = mnist32()
    for seed in args.seeds:
        for name in args.models:
            twin = twin_method(name)
            for precision in args.precisions:
                for run, method in (("default", DEFAULT_ESTIMATOR), ("twin", twin), (NOISE, twin)):
                    if run != "default" and precision != "fp32" and args.fp32_twin:
                        continue
                    path = runs / f"{name}-{precision}-{run}-seed{seed}.json"
                    if path.exists():
                        continue
                    row = train_one(name, precision, run, method, seed, args.steps, args.batch, args.weight, data,
                                    args.lr, args.schedule)
                    model = row.pop("_model")
                    row["true_penalty"] = true_penalty(model, data[2], twin)
                    row["true_penalty_by"], row["command"] = twin, report.command_line()
                    path.write_text(json.dumps(row, indent=1) + "\n")
                    print(json.dumps(row), flush=True)


def _interval(diffs) -> str:
    """mean [low, high]: the mean paired difference and its 95% bootstrap interval (points)."""
    if len(diffs) < 2:
        return "n/a"
    low, high = bootstrap_interval(diffs)
    return f"{statistics.fmean(diffs):+.1f} [{low:+.1f}, {high:+.1f}]"


def _accuracy_verdict(diffs) -> str:
    """SUPPORTED where the 95% interval of the mean paired difference lies inside [-ACCURACY_BOUND,
    +ACCURACY_BOUND] points, CONTRADICTED where it lies wholly outside, INCONCLUSIVE otherwise."""
    if len(diffs) < 2:
        return "n/a"
    low, high = bootstrap_interval(diffs)
    if -ACCURACY_BOUND <= low and high <= ACCURACY_BOUND:
        return "SUPPORTED"
    if high < -ACCURACY_BOUND or low > ACCURACY_BOUND:
        return "CONTRADICTED"
    return "INCONCLUSIVE"


def _verdict(ratios, gap, noise) -> str:
    """The row's verdict on both bounds, with the noise floor's own accuracy verdict (is the bound testable?).

    Penalty: the median over seeds of true R(default) / true R(twin) at most PENALTY_BOUND (one-sided: a
    smaller penalty than the twin's is no failure), the per-seed max reported beside it. Accuracy:
    ``_accuracy_verdict``. SUPPORTED needs both; CONTRADICTED where either is contradicted."""
    median, worst = statistics.median(ratios), max(ratios)
    penalty = "met" if median <= PENALTY_BOUND else "not met"
    accuracy, floor = _accuracy_verdict(gap), _accuracy_verdict(noise)
    if penalty == "not met" or accuracy == "CONTRADICTED":
        overall = "CONTRADICTED"
    else:
        overall = accuracy
    return (f"{overall}: penalty {penalty} (median {median:.2f}, max {worst:.2f}), accuracy {accuracy}; "
            f"noise - twin {floor}")


def _comparisons(rows):
    """(regime, model, precision, twin precision, runs, twins) per row of the table: within each training
    regime, each precision against the twin trained in that precision (the primary comparison), and bf16
    also against the fp32 twin (the stricter one: the twin then also has fp32's CE)."""
    keys = sorted({(_regime_of(r), r["model"], r["precision"]) for r in rows},
                  key=lambda k: (k[0][0] * k[0][1], k[1], PRECISIONS.index(k[2])))
    for training, name, precision in keys:
        group = [r for r in rows if (_regime_of(r), r["model"]) == (training, name)]
        cell = {(r["run"], r["seed"]): r for r in group if r["precision"] == precision}
        for twin_precision in dict.fromkeys((precision, "fp32")):
            twins = {(r["run"], r["seed"]): r for r in group if r["precision"] == twin_precision}
            yield training, name, precision, twin_precision, cell, twins


def _regime_of(row: dict) -> tuple:
    """(steps, batch, lr, schedule) of a run file."""
    return row["steps"], row["batch"], row["lr"], row["schedule"]


def table(runs: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*/*.json"))]
    report.write_csv(report.RESULTS / "estimator_training_timm.csv", rows)
    lines = report.table(
        ["training", "model", "weight", "precision", "seeds", "twin", "true R, default", "true R, twin",
         "default / twin (per seed)",
         "noise / twin (per seed)", "accuracy, default", "accuracy, twin", "default - twin (points, per seed)",
         "default - twin, mean [95% CI]", "noise - twin (points, per seed)", "noise - twin, mean [95% CI]",
         "verdict", "secant ratio (last 50 steps)", "monitor warned", "train s, default / twin"], [],
        "llllllllllllllllllll")[:2]
    for training, name, precision, twin_precision, cell, source in _comparisons(rows):
        seeds = sorted(s for (run, s) in cell if run == "default" and ("twin", s) in source and (NOISE, s) in source)
        if not seeds:
            continue
        d = [cell["default", s] for s in seeds]
        t = [source["twin", s] for s in seeds]
        n = [source[NOISE, s] for s in seeds]
        twin_label = f"{t[0]['method']} ({twin_precision})"
        if precision != twin_precision:
            twin_label += ", stricter"
        ratios = [a["true_penalty"] / b["true_penalty"] for a, b in zip(d, t)]
        gap = [100 * (a["accuracy"] - b["accuracy"]) for a, b in zip(d, t)]
        noise = [100 * (a["accuracy"] - b["accuracy"]) for a, b in zip(n, t)]
        steps, batch, lr, schedule = training
        lines.append("| " + " | ".join([
            f"{steps} x {batch}, lr {lr:g} {schedule}", name,
            " ".join(sorted({f"{r['weight']:g}" for r in d + t + n})), precision, " ".join(map(str, seeds)),
            twin_label,
            " ".join(f"{r['true_penalty']:.3g}" for r in d), " ".join(f"{r['true_penalty']:.3g}" for r in t),
            " ".join(f"{v:.2f}" for v in ratios),
            " ".join(f"{a['true_penalty'] / b['true_penalty']:.2f}" for a, b in zip(n, t)),
            " ".join(f"{r['accuracy']:.3f}" for r in d), " ".join(f"{r['accuracy']:.3f}" for r in t),
            " ".join(f"{v:+.1f}" for v in gap), _interval(gap), " ".join(f"{v:+.1f}" for v in noise), _interval(noise),
            _verdict(ratios, gap, noise),
            " ".join(f"{r['secant_ratio_last50']:.2f}" for r in d),
            " ".join("yes" if r["warned"] else "no" for r in d),
            f"{statistics.median(r['train_seconds'] for r in d):.0f} / "
            f"{statistics.median(r['train_seconds'] for r in t):.0f}",
        ]) + " |")
    title = (f"The default estimator ({DEFAULT_ESTIMATOR}) against its exact-trained twin (central in fp32 where exact is "
             f"refused) on real timm models, trained on the kit's MNIST digits (4,000 for training) zero-padded to "
             f"3x32x32 with Adam. training: steps x batch, the learning rate and its schedule (constant, or cosine "
             f"annealing to 0 over the run; the longer regime trains to convergence, where the runs' accuracies "
             f"spread less). True penalty (eval mode, fp32) and "
             f"accuracy on 1,000 held-out digits. twin: its estimator and the precision it trained in; each "
             f"precision is judged against the twin of its own precision, and bf16 also against the fp32 twin "
             f"(stricter: that twin also has fp32's CE). noise: the twin's estimator, in the twin's precision, from "
             f"the initialisation moved by {PERTURBATION:g} (the noise floor of a paired difference). Intervals: 95% "
             f"percentile bootstrap of the mean paired difference over the seeds. verdict: SUPPORTED where the "
             f"median over seeds of the true-penalty ratio is at most {PENALTY_BOUND:g} (one-sided; the per-seed "
             f"max beside it) and the accuracy interval lies inside [-{ACCURACY_BOUND:g}, +{ACCURACY_BOUND:g}] "
             f"points; CONTRADICTED where the median ratio exceeds {PENALTY_BOUND:g} or the interval lies wholly "
             f"outside; INCONCLUSIVE otherwise. noise - twin: the same accuracy verdict for the noise run against "
             f"the twin (anything but SUPPORTED there: the bound is not testable at this seed count). bf16: the "
             f"training step under torch.autocast('cpu', dtype=torch.bfloat16). Runs on a shared 2-core CPU, "
             f"1 thread.")
    print(report.write_markdown(report.RESULTS / "estimator_training_timm.md", title, lines,
                                "python benchmarks/estimator_training_timm.py --table` from the runs of `"
                                + "`, `".join(sorted({r.get('command', '') for r in rows} - {''}))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--weight", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="the learning rate's schedule: constant, or cosine annealing to 0 over --steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fp32-twin", action="store_true",
                   help="train the twin in fp32 only; the bf16 default is then compared with the fp32 twin")
    p.add_argument("--runs", default=str(DEFAULT_RUNS), help="the directory of the per-run files")
    p.add_argument("--table", action="store_true", help="write the table from the run files and exit")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.table:
        table(Path(args.runs))
    else:
        run(args)


if __name__ == "__main__":
    main()
