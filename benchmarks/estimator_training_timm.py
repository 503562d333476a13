"""The default estimator judged by training real timm models, in fp32 and under bf16 autocast.

For each model, precision and seed, two twins train from the same initialisation on the same batches:
one with the default estimator, one with ``exact`` (or, where a model refuses exact, ``central`` with
its passes in fp32). With ``--fp32-twin`` the twin trains in fp32 only, and the bf16 default is
compared with it (a stricter comparison: the twin then also has fp32's CE). On held-out images both
are measured the same way, in eval mode and fp32: the true penalty (exact R, or central's in fp32
where exact is refused) and accuracy.

Models (random init, 10 classes):

* ``mnasnet_small``: a deep BatchNorm ReLU mobile net (timm's MnasNet family);
* ``test_efficientnet``: timm's small EfficientNet (BatchNormAct2d with SiLU, squeeze-excite).

Data: the 1,797 8x8 scikit-learn digits upsampled (bilinear) to 3x32x32, standardised to mean 0 and
standard deviation 1 over the training images; the first 1,400 train, the other 397 are held out.
Training: Adam (lr 1e-3), batch 8, --steps steps, penalty weight --weight.

Each run writes one JSON file under benchmarks/results/estimator_training_timm/ (a rerun skips the
runs whose file exists: the benchmark is resumable); ``--table`` writes
benchmarks/results/estimator_training_timm.{csv,md} from those files.

    nice -n 10 python benchmarks/estimator_training_timm.py --models test_efficientnet --seeds 0 1 2
    nice -n 10 python benchmarks/estimator_training_timm.py --models mnasnet_small --seeds 0 1 2 --fp32-twin
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
from margreg_fast.kit.data import load_digits_images  # noqa: E402
from tests.timm_import import import_timm  # noqa: E402

DEFAULT_RUNS = report.RESULTS / "estimator_training_timm"
TRAIN, SIZE, BATCH, LR = 1400, 32, 8, 1e-3
PRECISIONS = ("fp32", "bf16")


def digits32():
    """(x_train, y_train, x_test, y_test): the digits at 3x32x32, standardised by the training images."""
    images, labels = load_digits_images()
    x = F.interpolate(images.float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = x[:TRAIN].mean(), x[:TRAIN].std()
    x = (x - mean) / std
    return x[:TRAIN], labels[:TRAIN], x[TRAIN:], labels[TRAIN:]


def build(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return import_timm().create_model(name, pretrained=False, num_classes=10).train()


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


def train_one(name: str, precision: str, method: str, seed: int, steps: int, weight: float, data) -> dict:
    x_train, y_train, x_test, y_test = data
    model = build(name, seed)
    opt = torch.optim.Adam(model.parameters(), LR)
    reg = MarginalDensityRegularizer(weight, estimator=method)
    order = torch.Generator().manual_seed(seed)
    ratios, start = [], time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SecantWarning)
        perm = torch.randperm(TRAIN, generator=order)
        for step in range(steps):
            if (step + 1) * BATCH > perm.numel():
                perm = torch.cat([perm, torch.randperm(TRAIN, generator=order)])
            idx = perm[step * BATCH:(step + 1) * BATCH]
            torch.manual_seed(seed * 100_003 + step)  # rfd's signs, dropout: the same draws in every twin
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss, stats = reg(model, x_train[idx], y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            ratios.append(stats["secant_ratio"])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        model.eval()
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"model": name, "precision": precision, "method": method, "seed": seed, "steps": steps,
            "weight": weight, "true_penalty": None, "accuracy": accuracy,
            "secant_ratio_last50": statistics.median(r for r in ratios[-50:] if r == r),
            "warned": any(issubclass(w.category, SecantWarning) for w in caught), "train_seconds": seconds,
            "_model": model}


def run(args) -> None:
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    data = digits32()
    for seed in args.seeds:
        for name in args.models:
            twin = twin_method(name)
            for precision in args.precisions:
                for method in dict.fromkeys((DEFAULT_ESTIMATOR, twin)):
                    if method == twin and precision != "fp32" and args.fp32_twin:
                        continue
                    path = runs / f"{name}-{precision}-{method}-seed{seed}.json"
                    if path.exists():
                        continue
                    row = train_one(name, precision, method, seed, args.steps, args.weight, data)
                    model = row.pop("_model")
                    row["true_penalty"] = true_penalty(model, data[2], twin)
                    row["true_penalty_by"], row["command"] = twin, report.command_line()
                    path.write_text(json.dumps(row, indent=1) + "\n")
                    print(json.dumps(row), flush=True)


def table(runs: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    report.write_csv(report.RESULTS / "estimator_training_timm.csv", rows)
    lines = report.table(
        ["model", "precision", "seeds", "twin", "true R, default", "true R, twin", "default / twin (per seed)",
         "median ratio", "accuracy, default", "accuracy, twin", "accuracy difference (per seed, points)",
         "secant ratio (last 50 steps)", "monitor warned", "train s, default / twin"], [], "lllllllrllllll")[:2]
    keys = sorted({(r["model"], r["precision"]) for r in rows}, key=lambda k: (k[0], PRECISIONS.index(k[1])))
    for name, precision in keys:
        cell = {(r["method"], r["seed"]): r for r in rows if (r["model"], r["precision"]) == (name, precision)}
        fp32 = {(r["method"], r["seed"]): r for r in rows if (r["model"], r["precision"]) == (name, "fp32")}
        twin = next(r["true_penalty_by"] for r in cell.values())
        defaults = sorted(s for (m, s) in cell if m == DEFAULT_ESTIMATOR)
        # the twin of the same precision where every seed has one, else the fp32 twin (--fp32-twin)
        same = all((twin, s) in cell for s in defaults)
        source = cell if same else fp32
        seeds = [s for s in defaults if (twin, s) in source]
        if not seeds:
            continue
        d = [cell[DEFAULT_ESTIMATOR, s] for s in seeds]
        t = [source[twin, s] for s in seeds]
        twin_label = twin if same or precision == "fp32" else f"{twin} (fp32)"
        ratio = [a["true_penalty"] / b["true_penalty"] for a, b in zip(d, t)]
        gap = [100 * (a["accuracy"] - b["accuracy"]) for a, b in zip(d, t)]
        lines.append("| " + " | ".join([
            name, precision, " ".join(map(str, seeds)), twin_label,
            " ".join(f"{r['true_penalty']:.3g}" for r in d), " ".join(f"{r['true_penalty']:.3g}" for r in t),
            " ".join(f"{v:.2f}" for v in ratio), f"{statistics.median(ratio):.2f}",
            " ".join(f"{r['accuracy']:.3f}" for r in d), " ".join(f"{r['accuracy']:.3f}" for r in t),
            " ".join(f"{v:+.1f}" for v in gap), " ".join(f"{r['secant_ratio_last50']:.2f}" for r in d),
            " ".join("yes" if r["warned"] else "no" for r in d),
            f"{statistics.median(r['train_seconds'] for r in d):.0f} / {statistics.median(r['train_seconds'] for r in t):.0f}",
        ]) + " |")
    steps = sorted({r["steps"] for r in rows})
    weights = sorted({r["weight"] for r in rows})
    title = (f"The default estimator ({DEFAULT_ESTIMATOR}) against its exact-trained twin (central in fp32 where exact is "
             f"refused) on real timm models: {steps} steps of batch {BATCH} at weight {weights} on the 8x8 digits "
             f"upsampled to 3x32x32, Adam lr {LR}; true penalty (eval mode, fp32) and accuracy on 397 held-out "
             f"images. bf16: the training step under torch.autocast('cpu', dtype=torch.bfloat16). Runs on a shared "
             f"2-core CPU, 1 thread.")
    print(report.write_markdown(report.RESULTS / "estimator_training_timm.md", title, lines,
                                "python benchmarks/estimator_training_timm.py --table` from the runs of `"
                                + "`, `".join(sorted({r.get('command', '') for r in rows} - {''}))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["test_efficientnet", "mnasnet_small"])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--weight", type=float, default=0.1)
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
