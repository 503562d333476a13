"""The step rule's secant ratios on the timm zoo and the deep mobile BatchNorm families (random init, train mode).

For each model (tests/zoo/models.py: STEP_RULE_MODELS), input size and with / without dropout and
drop-path: one batch of uniform [0, 1) images, and the secant ratio that ``MarginalDensityRegularizer``
reports (sqrt(sum slope^2 / sum ||g||^2), the monitor's ratio; statistics held and masks replayed as
in training) for

* ``fd`` (the forward secant, s = +1), ``central`` and the default ``rfd`` (a random sign per sample),
  each at the step rule "auto" (min(r, 0.03 / ||g||) with r = eps^(1/2) RMS(x) for fd and rfd,
  4 eps^(1/3) RMS(x) for central: margreg_fast/_estimators/steps.py);
* ``fd`` and ``rfd`` at the rule before the curvature bound, 4 eps^(1/3) RMS(x) (2.0e-2 RMS in fp32).

    python benchmarks/estimator_step_rule.py [--sizes 64 224] [--models ...]

Writes benchmarks/results/estimator_step_rule.{csv,md}.

``--sweep`` measures instead the choice of C, the curvature bound: the default rfd's secant ratio at
the rule min(r, C / ||g||) for C in 1, 0.3, 0.1, 0.03 and 0.01, on every model at 64 px (with and
without dropout and drop-path) and on --sweep-224 at 224 px (the whole zoo at 224 px is too slow
for the shared CPU):

    python benchmarks/estimator_step_rule.py --sweep

Writes benchmarks/results/estimator_step_rule_sweep.{csv,md}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast import MarginalDensityRegularizer  # noqa: E402
from tests.zoo.models import STEP_RULE_MODELS, build_at  # noqa: E402
from tests.zoo.step_rule import curvature_bound  # noqa: E402

SEED = 1234
#: (column, method, step): "old" is the rule before the curvature bound, 4 eps^(1/3) RMS(x).
RULES = (("fd, auto", "fd", "auto"), ("central, auto", "central", "auto"), ("rfd, auto", "rfd", "auto"),
         ("fd, old", "fd", "old"), ("rfd, old", "rfd", "old"))
#: the sweep's values of C (the library's is CURVATURE_BOUND = 0.03)
SWEEP = (1.0, 0.3, 0.1, 0.03, 0.01)
BAND = (0.8, 1.25)


def batch(size: int):
    gen = torch.Generator().manual_seed(1)
    b = 4 if size <= 64 else 2
    return torch.rand(b, 3, size, size, generator=gen), torch.randint(0, 10, (b,), generator=gen)


def ratio(model, x, y, method: str, step) -> tuple:
    """(the regulariser's secant ratio, its mean ||g||) for one step of ``method``."""
    if step == "old":
        step = 4 * torch.finfo(torch.float32).eps ** (1 / 3) * x.flatten(1).pow(2).mean(1).sqrt().mean().item()
    torch.manual_seed(SEED)
    _, stats = MarginalDensityRegularizer(1.0, estimator=method, step=step)(model, x, y)
    return stats["secant_ratio"], stats["grad_norm"]


def sweep(models, large) -> None:
    """rfd's secant ratio at each C of SWEEP: models at 64 px, ``large`` at 224 px."""
    rows, cells = [], []
    for size, names in ((64, models), (224, large)):
        x, y = batch(size)
        for name in names:
            for drop in (False, True):
                torch.manual_seed(0)
                model = build_at(name, size, drop)
                row = {"model": name, "size": size, "drop": drop}
                for c in SWEEP:
                    with curvature_bound(c):
                        row[f"C={c:g}"], row["grad_norm"] = ratio(model, x, y, "rfd", "auto")
                rows.append(row)
                cells.append([name, str(size), "yes" if drop else "no", f"{row['grad_norm']:.3g}"]
                             + [f"{row[f'C={c:g}']:.2f}" for c in SWEEP])
                print(" | ".join(cells[-1]), flush=True)
    lines = report.table(["model", "px", "dropout + drop-path", "mean ‖g‖"] + [f"C = {c:g}" for c in SWEEP], cells,
                         "lllr" + "r" * len(SWEEP))
    lines.append("")
    for c in SWEEP:
        values = [r[f"C={c:g}"] for r in rows]
        outside = [f"{r['model']} {r['size']} px{' (drop)' if r['drop'] else ''} {r[f'C={c:g}']:.3f}"
                   for r in rows if not BAND[0] <= r[f"C={c:g}"] <= BAND[1]]
        lines.append(f"- C = {c:g}: ratios in [{min(values):.2f}, {max(values):.2f}]; outside [{BAND[0]}, {BAND[1]}]: "
                     + ("; ".join(outside) if outside else "none") + ".")
    title = ("The choice of the curvature bound C: the default rfd's secant ratio (the regulariser's "
             "stats['secant_ratio']) at the step min(r, C / ||g||), r = eps^(1/2) RMS(x), at random init, train "
             "mode, float32, batch 4 (64 px) or 2 (224 px) of uniform [0, 1) images, the same sign draws at every "
             "C; dropout 0.2 and drop-path 0.1 where marked. The library's C is 0.03.")
    print(report.publish("estimator_step_rule_sweep", rows, title, lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    p.add_argument("--models", nargs="+", default=list(STEP_RULE_MODELS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sweep", action="store_true", help="rfd's ratio over C (see the module docstring)")
    p.add_argument("--sweep-224", nargs="*", default=["mobileone_s0", "mobilenetv4_conv_small"],
                   help="the models the sweep also runs at 224 px")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.sweep:
        sweep(args.models, args.sweep_224)
        return
    rows, cells = [], []
    for size in args.sizes:
        x, y = batch(size)
        for name in args.models:
            for drop in (False, True):
                torch.manual_seed(0)
                model = build_at(name, size, drop)
                row = {"model": name, "size": size, "drop": drop}
                for column, method, step in RULES:
                    row[column], row["grad_norm"] = ratio(model, x, y, method, step)
                rows.append(row)
                cells.append([name, str(size), "yes" if drop else "no", f"{row['grad_norm']:.3g}"]
                             + [f"{row[c]:.2f}" for c, _, _ in RULES])
                print(" | ".join(cells[-1]), flush=True)
    lines = report.table(["model", "px", "dropout + drop-path", "mean ‖g‖"] + [c for c, _, _ in RULES], cells,
                         "lllr" + "r" * len(RULES))
    lines.append("")
    for column, _, _ in RULES:
        values = [r[column] for r in rows]
        lines.append(f"- {column}: secant ratios in [{min(values):.2f}, {max(values):.2f}] over every row.")
    title = ("Secant ratios (the regulariser's stats['secant_ratio']) at random init, train mode, float32, batch 4 "
             "(64 px) or 2 (224 px) of uniform [0, 1) images; dropout 0.2 and drop-path 0.1 where marked. "
             "auto = min(r, 0.03 / ||g||), r = eps^(1/2) RMS(x) (fd, rfd) or 4 eps^(1/3) RMS(x) (central); "
             "old = 4 eps^(1/3) RMS(x).")
    print(report.publish("estimator_step_rule", rows, title, lines))


if __name__ == "__main__":
    main()
