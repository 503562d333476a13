"""Does the default's training step differ from exact's other than by noise? Checked along training.

The twins of ``benchmarks/estimator_training_timm.py`` end apart by a few accuracy points on
test_efficientnet. This asks whether the default's step differs systematically from exact's, on the
same model, data and batches: an exact-trained run (fp32, batch 8, weight 0.1, Adam lr 1e-3) stops at
steps 0, 100, 200 and 300, and on the next training batch compares

* the parameter gradient of the mean penalty by the default (rfd), for 4 sign draws, with exact's:
  cosine of each draw, cosine of their mean, and the ratio of the mean's norm to exact's (a
  systematically weaker or stronger regularisation would show there);
* one regularised training step (CE + weight x penalty) by each from the same state: the largest
  difference of the BatchNorm running statistics and counters after it (what the eval-mode model
  reads), and the cosine of the total parameter gradients.

    nice -n 10 python benchmarks/estimator_training_gradient.py

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
from margreg_fast import DEFAULT_METHOD, MarginalDensityRegularizer, marginal_density_penalty  # noqa: E402

CHECKPOINTS, DRAWS, BATCH, WEIGHT = (0, 100, 200, 300), 4, 8, 0.1


def _grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def penalty_gradient(model, x, method: str, seed: int) -> torch.Tensor:
    model = copy.deepcopy(model)
    torch.manual_seed(seed)
    marginal_density_penalty(model, x, method=method).backward()
    return _grad(model)


def training_step(model, x, y, method: str):
    """(running buffers, total parameter gradient) after one regularised step's backward from ``model``'s state."""
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    loss, _ = MarginalDensityRegularizer(WEIGHT, method=method)(model, x, y)
    loss.backward()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    return buffers, _grad(model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="test_efficientnet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train, _, _ = mnist32()
    model = build(args.model, args.seed)
    opt = torch.optim.Adam(model.parameters(), LR)
    reg = MarginalDensityRegularizer(WEIGHT, method="exact")
    perm = torch.randperm(TRAIN, generator=torch.Generator().manual_seed(args.seed))
    rows, cells = [], []
    for step in range(CHECKPOINTS[-1] + 1):
        idx = perm[(step * BATCH) % TRAIN:(step * BATCH) % TRAIN + BATCH]
        x, y = x_train[idx], y_train[idx]
        if step in CHECKPOINTS:
            exact = penalty_gradient(model, x, "exact", 0)
            draws = [penalty_gradient(model, x, DEFAULT_METHOD, 1 + k) for k in range(DRAWS)]
            mean = sum(draws) / DRAWS
            (b_default, g_default), (b_exact, g_exact) = training_step(model, x, y, DEFAULT_METHOD), \
                training_step(model, x, y, "exact")
            row = {"model": args.model, "step": step,
                   "cosine_per_draw": [F.cosine_similarity(g, exact, dim=0).item() for g in draws],
                   "cosine_of_mean": F.cosine_similarity(mean, exact, dim=0).item(),
                   "norm_ratio_of_mean": (mean.norm() / exact.norm()).item(),
                   "buffer_max_difference": max((b_default[k].double() - b_exact[k].double()).abs().max().item()
                                                for k in b_exact),
                   "total_gradient_cosine": F.cosine_similarity(g_default, g_exact, dim=0).item()}
            rows.append(row)
            cells.append([str(step), " ".join(f"{c:.5f}" for c in row["cosine_per_draw"]),
                          f"{row['cosine_of_mean']:.5f}", f"{row['norm_ratio_of_mean']:.4f}",
                          f"{row['buffer_max_difference']:.3g}", f"{row['total_gradient_cosine']:.5f}"])
            print(" | ".join(cells[-1]), flush=True)
        torch.manual_seed(args.seed * 100_003 + step)
        loss, _ = reg(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    lines = report.table(["step", f"cosine with exact, {DRAWS} sign draws", "cosine, their mean",
                          "norm, their mean / exact's", "running statistics, max difference after a step",
                          "total gradient cosine (CE + penalty)"], cells, "lrrrrr")
    title = (f"The default's ({DEFAULT_METHOD}) penalty gradient against exact's along an exact-trained run of "
             f"{args.model} (seed {args.seed}, fp32, batch {BATCH}, weight {WEIGHT}, the kit's MNIST digits at "
             f"3x32x32, as in estimator_training_timm), on the next training batch at each step shown.")
    print(report.publish("estimator_training_gradient", rows, title, lines))


if __name__ == "__main__":
    main()
