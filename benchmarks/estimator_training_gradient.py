"""Does the default's training step differ from exact's other than by noise? Checked along training.

The twins of ``benchmarks/estimator_training_timm.py`` end apart by a few accuracy points on
test_efficientnet. This asks whether the default's step differs systematically from exact's, on the
same model, data and batches: an exact-trained run (fp32, batch 8, the table's weight, Adam lr 1e-3) stops at
steps 0, 100, 200 and 300, and on the next training batch compares

* the parameter gradient of the mean penalty by the default (rfd), for 4 sign draws, with exact's:
  cosine of each draw, cosine of their mean, and the ratio of the mean's norm to exact's (a
  systematically weaker or stronger regularisation would show there);
* one regularised training step (CE + weight x penalty) by each from the same state: the largest
  difference of the BatchNorm running statistics and counters after it (what the eval-mode model
  reads), and the cosine of the total parameter gradients.

A second table asks what the step does to it, at initialisation on the first training batch: the
default's penalty gradient against exact's, per sign draw, at the automatic step and at fixed steps,
in float32 and float64 (float64 tells the crossing of ReLU kinks, which does not depend on the
precision, from rounding, which does).

    nice -n 10 python benchmarks/estimator_training_gradient.py \
        --models test_efficientnet:0.1 test_efficientnet_relu:0.01

Writes benchmarks/results/estimator_training_gradient.{csv,md}.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.estimator_training_timm import LR, TRAIN, build, mnist32  # noqa: E402
from margreg_fast import DEFAULT_ESTIMATOR, MarginalDensityRegularizer, marginal_density_penalty  # noqa: E402

CHECKPOINTS, DRAWS, BATCH = (0, 100, 200, 300), 4, 8


def _grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def penalty_gradient(model, x, method: str, seed: int, step="auto") -> torch.Tensor:
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    marginal_density_penalty(model, x, estimator=method, step=step).backward()
    return _grad(model)


def training_step(model, x, y, method: str, weight: float):
    """(running buffers, total parameter gradient) after one regularised step's backward from ``model``'s state."""
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    loss, _ = MarginalDensityRegularizer(weight, estimator=method)(model, x, y)
    loss.backward()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    return buffers, _grad(model)


STEPS = ("auto", 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def over_steps(name: str, x, rows: list, cells: list) -> None:
    model = build(name, 0)
    for dtype in (torch.float32, torch.float64):
        m, xd = copy.deepcopy(model).to(dtype), x.to(dtype)
        exact = penalty_gradient(m, xd, "exact", 0)
        for step in STEPS:
            draws = [penalty_gradient(m, xd, DEFAULT_ESTIMATOR, 1 + k, step) for k in range(DRAWS)]
            row = {"model": name, "dtype": str(dtype).removeprefix("torch."), "step": step,
                   "cosine_per_draw": [F.cosine_similarity(g, exact, dim=0).item() for g in draws],
                   "norm_ratio_per_draw": [(g.norm() / exact.norm()).item() for g in draws]}
            rows.append(row)
            cells.append([name, row["dtype"], str(step), " ".join(f"{c:.3f}" for c in row["cosine_per_draw"]),
                          " ".join(f"{c:.3g}" for c in row["norm_ratio_per_draw"])])
            print(" | ".join(cells[-1]), flush=True)


def along_training(name: str, weight: float, seed: int, data, rows: list, cells: list) -> None:
    x_train, y_train = data
    model = build(name, seed)
    opt = torch.optim.Adam(model.parameters(), LR)
    reg = MarginalDensityRegularizer(weight, estimator="exact")
    perm = torch.randperm(TRAIN, generator=torch.Generator().manual_seed(seed))
    for step in range(CHECKPOINTS[-1] + 1):
        idx = perm[(step * BATCH) % TRAIN:(step * BATCH) % TRAIN + BATCH]
        x, y = x_train[idx], y_train[idx]
        if step in CHECKPOINTS:
            exact = penalty_gradient(model, x, "exact", 0)
            draws = [penalty_gradient(model, x, DEFAULT_ESTIMATOR, 1 + k) for k in range(DRAWS)]
            mean = sum(draws) / DRAWS
            (b_default, g_default), (b_exact, g_exact) = training_step(model, x, y, DEFAULT_ESTIMATOR, weight), \
                training_step(model, x, y, "exact", weight)
            row = {"model": name, "weight": weight, "seed": seed, "step": step,
                   "cosine_per_draw": [F.cosine_similarity(g, exact, dim=0).item() for g in draws],
                   "cosine_of_mean": F.cosine_similarity(mean, exact, dim=0).item(),
                   "norm_ratio_of_mean": (mean.norm() / exact.norm()).item(),
                   "buffer_max_difference": max((b_default[k].double() - b_exact[k].double()).abs().max().item()
                                                for k in b_exact),
                   "total_gradient_cosine": F.cosine_similarity(g_default, g_exact, dim=0).item()}
            rows.append(row)
            cells.append([name, f"{weight:g}", str(step), " ".join(f"{c:.5f}" for c in row["cosine_per_draw"]),
                          f"{row['cosine_of_mean']:.5f}", f"{row['norm_ratio_of_mean']:.4f}",
                          f"{row['buffer_max_difference']:.3g}", f"{row['total_gradient_cosine']:.5f}"])
            print(" | ".join(cells[-1]), flush=True)
        torch.manual_seed(seed * 100_003 + step)
        loss, _ = reg(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["test_efficientnet:0.1"], help="NAME:WEIGHT, as in the table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = mnist32()[:2]
    rows, cells, step_rows, step_cells = [], [], [], []
    for spec in args.models:
        name, weight = spec.split(":")
        along_training(name, float(weight), args.seed, data, rows, cells)
        over_steps(name, data[0][torch.randperm(TRAIN, generator=torch.Generator().manual_seed(args.seed))[:BATCH]],
                   step_rows, step_cells)
    lines = report.table(["model", "weight", "step", f"cosine with exact, {DRAWS} sign draws", "cosine, their mean",
                          "norm, their mean / exact's", "running statistics, max difference after a step",
                          "total gradient cosine (CE + penalty)"], cells, "lllrrrrr")
    lines += ["", f"At initialisation, on the first training batch: the default's penalty gradient against exact's "
              f"in the same precision, per sign draw, by step (auto: the library's rule).", ""]
    lines += report.table(["model", "dtype", "step", "cosine with exact, per draw", "norm / exact's, per draw"],
                          step_cells, "lllrr")
    title = (f"The default's ({DEFAULT_ESTIMATOR}) penalty gradient against exact's along an exact-trained run of each "
             f"model (seed {args.seed}, fp32, batch {BATCH}, the kit's MNIST digits at 3x32x32, as in "
             f"estimator_training_timm), on the next training batch at each step shown.")
    rows += step_rows
    fields = list(dict.fromkeys(k for r in rows for k in r))
    report.write_csv(report.RESULTS / "estimator_training_gradient.csv", rows, fields)
    print(report.write_markdown(report.RESULTS / "estimator_training_gradient.md", title, lines, report.command_line()))


if __name__ == "__main__":
    main()
