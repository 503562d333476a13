"""The step rule's secant ratios on the timm zoo and the deep mobile BatchNorm families (random init, train mode).

For each model (tests/zoo/models.py: STEP_RULE_MODELS), input size and with / without dropout and
drop-path: one batch of uniform [0, 1) images, the clean pass (statistics held, masks replayed:
margreg_fast.estimators.passes), g = grad_x logsumexp f and v = g / ||g||, then both one-sided secant
slopes along v, (S(x + s h v) - S(x)) / (s h) for s = +1 and -1, as ratios to ||g||
(sqrt(sum slope^2 / sum ||g||^2), the monitor's ratio), at

* the rounding bound alone, 4 eps^(1/3) RMS(x) (the rule before the curvature bound), and
* the step rule "auto" (min(eps^(1/3) RMS(x), 0.03 / ||g||): margreg_fast/estimators/steps.py),

and the secant ratio that ``MarginalDensityRegularizer(1.0)`` reports (its random signs).

    python benchmarks/estimator_step_rule.py [--sizes 64 224] [--models ...]

Writes benchmarks/results/estimator_step_rule.{csv,md}.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast import MarginalDensityRegularizer  # noqa: E402
from margreg_fast.estimators import ModelPasses, resolve_step, unit_direction  # noqa: E402
from margreg_fast.estimators.registry import ESTIMATORS  # noqa: E402
from tests.zoo.models import STEP_RULE_MODELS, build_at  # noqa: E402

SEED = 1234
#: The rule before the curvature bound: 4 eps^(1/3) RMS(x).
OLD_FACTOR = 4.0


def batch(size: int):
    gen = torch.Generator().manual_seed(1)
    b = 4 if size <= 64 else 2
    return torch.rand(b, 3, size, size, generator=gen), torch.randint(0, 10, (b,), generator=gen)


def ratios(model, x):
    """(median ||g||, median h ||g|| at auto, {rule: (ratio s=+1, ratio s=-1)})."""
    passes = ModelPasses(model)
    torch.manual_seed(SEED)
    x_in = x.clone().requires_grad_(True)
    z0 = passes.clean(x_in)
    s0 = torch.logsumexp(z0.double(), 1)
    with passes.input_gradient():
        (g,) = torch.autograd.grad(torch.logsumexp(z0, 1).sum(), x_in)
    v, norm = unit_direction(g)
    order = ESTIMATORS["rfd"].order
    rms = x.flatten(1).pow(2).mean(1).sqrt()
    rules = {"rounding only": OLD_FACTOR * torch.finfo(torch.float32).eps ** (1 / 3) * rms,
             "auto": resolve_step("auto", x, torch.float32, order, norm)}
    out = {}
    with torch.no_grad():
        for rule, h in rules.items():
            pair = []
            for sign in (1.0, -1.0):
                z1 = passes.probe(x + sign * h.view(-1, 1, 1, 1) * v)
                slope = (torch.logsumexp(z1.double(), 1) - s0) / (sign * h.double())
                pair.append(math.sqrt(slope.pow(2).sum().item() / norm.double().pow(2).sum().item()))
            out[rule] = tuple(pair)
    return norm.median().item(), (rules["auto"] * norm).median().item(), out


def regulariser_ratio(model, x, y) -> float:
    torch.manual_seed(SEED)
    _, stats = MarginalDensityRegularizer(1.0)(model, x, y)
    return stats["secant_ratio"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    p.add_argument("--models", nargs="+", default=list(STEP_RULE_MODELS))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, cells = [], []
    for size in args.sizes:
        x, y = batch(size)
        for name in args.models:
            for drop in (False, True):
                torch.manual_seed(0)
                model = build_at(name, size, drop)
                g, moved, r = ratios(model, x)
                reg = regulariser_ratio(model, x, y)
                row = {"model": name, "size": size, "drop": drop, "grad_norm": g, "h_times_grad_norm": moved,
                       "rounding_plus": r["rounding only"][0], "rounding_minus": r["rounding only"][1],
                       "auto_plus": r["auto"][0], "auto_minus": r["auto"][1], "regulariser": reg}
                rows.append(row)
                cells.append([name, str(size), "yes" if drop else "no", f"{g:.3g}", f"{moved:.3g}",
                              f"{row['rounding_plus']:.2f} / {row['rounding_minus']:.2f}",
                              f"{row['auto_plus']:.2f} / {row['auto_minus']:.2f}", f"{reg:.2f}"])
                print(" | ".join(cells[-1]), flush=True)
    out = report.RESULTS / "estimator_step_rule"
    report.write_csv(out.with_suffix(".csv"), rows)
    lines = report.table(["model", "px", "dropout + drop-path", "median ||g||", "median h ||g|| (auto)",
                          "ratio s=+1 / s=-1, rounding bound only (4 eps^(1/3) RMS)", "ratio s=+1 / s=-1, auto",
                          "regulariser's secant_ratio"], cells, "lllrrrrr")
    auto = [v for r in rows for v in (r["auto_plus"], r["auto_minus"])]
    lines += ["", f"Over every row, the step rule's one-sided ratios lie in [{min(auto):.2f}, {max(auto):.2f}]; the "
              f"regulariser's in [{min(r['regulariser'] for r in rows):.2f}, {max(r['regulariser'] for r in rows):.2f}]."]
    title = ("Secant ratios at random init, train mode, float32, batch 4 (64 px) or 2 (224 px) of uniform [0, 1) "
             "images; dropout 0.2 and drop-path 0.1 where marked.")
    print(report.write_markdown(out.with_suffix(".md"), title, lines, report.command_line()))


if __name__ == "__main__":
    main()
