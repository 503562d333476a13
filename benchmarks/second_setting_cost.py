"""Cost of the second model (ResNet, BatchNorm) against the claims' PaperCNN: one training step of each
claims scheme (none, igr, joint, mdr) as the kit trains it (``benchmarks/kit_steps.py``), on 64 real
BlockMNIST images (1x56x28, seed 0's training split), one thread, rounds interleaved so that both models
see the same machine load; medians and the ResNet /
PaperCNN ratio per scheme. With the committed claims' recorded wall seconds per full point
(docs/results/claims/claims.json, records' wall_s), the ratio gives the estimated wall time of the claim
rows on the ResNet; the second dataset (animal silhouettes) keeps the PaperCNN and the 56x28 shape and has
8,000 training images against 4,000, so its points cost at most twice the committed ones.

    python benchmarks/second_setting_cost.py [--rounds 7] [--steps 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.kit_steps import interleaved_medians, kit_steps  # noqa: E402
from margreg_fast.kit.experiments.config import ExperimentConfig  # noqa: E402
from margreg_fast.kit.experiments.datasets import build_datasets  # noqa: E402

SCHEMES = ("none", "igr", "joint", "mdr")
MODELS = {"papercnn": {"model": "papercnn", "width": 8}, "resnet": {"model": "resnet", "width": 8}}
CLAIMS_JSON = report.ROOT / "docs" / "results" / "claims" / "claims.json"
SEEDS, JOBS = 5, 2
GRIDS = {"resnet": (0.001, 0.01, 0.1, 1.0), "animal": (0.1, 1.0, 10.0)}  # the selections' grids (Makefile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    weights_file = report.ROOT / "margreg_fast" / "kit" / "configs" / "blockmnist_weights.json"
    weights = json.loads(weights_file.read_text())["weights"]
    steps = {}
    for m in MODELS:
        cfg = ExperimentConfig(weights=weights, schemes=SCHEMES, **MODELS[m])
        train, _ = build_datasets(cfg, 0)
        for s, step in kit_steps(cfg, train.x[:cfg.batch_size], train.y[:cfg.batch_size]).items():
            steps[m, s] = step
    medians = interleaved_medians(steps, warmup=1, rounds=args.rounds, repeat=args.steps)
    records = json.loads(CLAIMS_JSON.read_text())["records"]
    rows, lines, total, select = [], [], {"resnet": 0.0, "animal": 0.0}, {"resnet": 0.0, "animal": 0.0}
    for s in SCHEMES:
        med = {m: medians[m, s] for m in MODELS}
        ratio = med["resnet"] / med["papercnn"]
        walls = [r["wall_s"] for r in records if (r["experiment"], r["scheme"], r["full"]) == ("blockmnist", s, True)
                 and r["weight"] == weights.get(s, 0.0) and r["wall_s"] is not None]
        point = statistics.median(walls)
        rows.append({"scheme": s, "papercnn_step_s": med["papercnn"], "resnet_step_s": med["resnet"], "ratio": ratio,
                     "committed_full_point_s": point, "resnet_point_s": ratio * point, "animal_point_s": 2 * point})
        total["resnet"] += SEEDS * ratio * point / JOBS
        total["animal"] += SEEDS * 2 * point / JOBS
        light_walls = [r["wall_s"] for r in records if (r["experiment"], r["scheme"], r["full"])
                       == ("blockmnist", s, False) and r["wall_s"] is not None]
        light = statistics.median(light_walls) if light_walls else point  # none has no light point: its full one
        for setting, factor in (("resnet", ratio), ("animal", 2.0)):
            runs = 1 if s == "none" else len(GRIDS[setting])  # the selection: none once, the others at every weight
            select[setting] += runs * factor * light / JOBS
        lines.append([s, f"{1e3 * med['papercnn']:.1f}", f"{1e3 * med['resnet']:.1f}", f"{ratio:.2f}", f"{point:.0f}",
                      f"{ratio * point:.0f}", f"{2 * point:.0f}"])
    body = [f"One training step (batch 64, 1x56x28, one thread; the ResNet at width {MODELS['resnet']['width']}), "
            f"median of {args.rounds} interleaved rounds of "
            f"{args.steps} steps; the committed claims' median wall seconds per full point (training and full "
            "evaluation at 500 images); the estimates: that times the step ratio (ResNet), twice it (animal: twice "
            "the training images; an upper bound).", "",
            *report.table(["scheme", "PaperCNN step ms", "ResNet step ms", "ratio", "committed point s",
                           "ResNet point s (est.)", "animal point s (est.)"], lines, "lrrrrrr"), "",
            f"Estimated wall time of the claim rows (none, igr, joint, mdr; {SEEDS} seeds; {JOBS} jobs on the "
            f"committed claims' machine): ResNet {total['resnet'] / 3600:.2f} h, animal silhouettes "
            f"{total['animal'] / 3600:.2f} h. Their weight selections (`margreg-fast select`, one seed, points scored "
            "by accuracy and leakage, priced as the committed claims' light points): ResNet (grid "
            f"{' '.join(f'{w:g}' for w in GRIDS['resnet'])}) {select['resnet'] / 3600:.2f} h, animal silhouettes (grid "
            f"{' '.join(f'{w:g}' for w in GRIDS['animal'])}) {select['animal'] / 3600:.2f} h."]
    print(report.publish("second_setting_cost", rows, "# Cost of the second model and dataset", body))


if __name__ == "__main__":
    main()
