"""How well each estimator's parameter gradient agrees with exact (double backprop), and how that depends on h.

For each model kind, dtype and state (at init, and after ``--train-steps`` steps of plain training),
one batch of zero-background digits, and each estimator, the cosine between the gradient of the mean
marginal penalty w.r.t. all parameters and exact's gradient (computed in the same dtype), and the
relative error of the mean penalty value. ``rfd`` draws random signs: its cosine is the median over
``--draws`` draws (one draw is what a training step sees).

Model kinds (margreg_fast.kit.models), 1x20x20 inputs, digits on a zero background:

* ``relu-max`` / ``gelu-max``: MaxPoolCNN (exact max-pool ties on the background; kinks for ReLU);
* ``relu-avg`` / ``gelu-avg``: SmallCNN with average pooling (no ties; kinks for ReLU);
* ``bn-silu``: ResidualCNN with BatchNorm in train mode (statistics held, see estimators/passes.py).

    python benchmarks/estimator_agreement.py                      # the table at each method's default step
    python benchmarks/estimator_agreement.py --sweep              # cosine against h for fd, central, rfd

Writes benchmarks/results/estimator_agreement.{csv,md} (or estimator_step_sweep.{csv,md} with --sweep).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import report  # noqa: E402

from margreg_fast import DEFAULT_STEP, marginal_density_penalty  # noqa: E402
from margreg_fast.kit import models  # noqa: E402
from margreg_fast.kit.data import load_digits_images, place_on_canvas  # noqa: E402

KINDS = ("relu-max", "gelu-max", "relu-avg", "gelu-avg", "bn-silu")
METHODS = ("jvp", "fd", "central", "rfd")
SIZE, BATCH = 20, 64


def canvas_digits(n: int, seed: int = 0):
    """The first n 8x8 scikit-learn digits at random positions on a zero 20x20 canvas: (x, y)."""
    images, labels = load_digits_images()
    return place_on_canvas(images[:n], SIZE, seed=seed), labels[:n]


def build(kind: str) -> torch.nn.Module:
    act, pool = kind.split("-")
    if kind == "bn-silu":
        return models.ResidualCNN(in_channels=1, width=8, blocks=2, activation="silu")
    if pool == "max":
        return models.MaxPoolCNN(width=8, image_size=SIZE, hidden=64, activation=act)
    return models.SmallCNN(width=8, image_size=SIZE, activation=act)


def trained(kind: str, steps: int, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(kind)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for i in range(steps):
        idx = torch.arange(i * BATCH, (i + 1) * BATCH) % len(x)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def flat_grad(model, x, method, step):
    """(mean penalty value, gradient of it w.r.t. all parameters, flattened)."""
    penalty = marginal_density_penalty(model, x, estimator=method, step=step)
    grads = torch.autograd.grad(penalty, [p for p in model.parameters()])
    return penalty.item(), torch.cat([g.flatten() for g in grads])


def agreement(model, x, method, step, draws):
    """(cosine with exact, relative error of the value): median over draws for rfd."""
    value_exact, g_exact = flat_grad(model, x, "exact", step)
    rows = []
    for d in range(draws if method == "rfd" else 1):
        torch.manual_seed(100 + d)
        value, g = flat_grad(model, x, method, step)
        rows.append((F.cosine_similarity(g, g_exact, dim=0).item(), abs(value - value_exact) / value_exact))
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)


def run(args) -> list[dict]:
    x_all, y_all = canvas_digits(1000)
    x = x_all[-BATCH:]
    out = []
    for kind in args.kinds:
        for state, steps in (("init", 0), ("trained", args.train_steps)):
            base = trained(kind, steps, x_all[:-BATCH], y_all[:-BATCH])
            for dtype in (torch.float32, torch.float64):
                model, xb = base.to(dtype), x.to(dtype)
                steps_of = (lambda m: args.steps) if args.sweep else (lambda m: [DEFAULT_STEP])
                for method in args.methods:
                    for h in steps_of(method):
                        if method == "jvp" and args.sweep:
                            continue
                        cos, rel = agreement(model, xb, method, h, args.draws)
                        row = dict(model=kind, state=state, dtype=str(dtype).replace("torch.", ""), method=method,
                                   step=h, cosine=round(cos, 4), value_rel_error=float(f"{rel:.2e}"))
                        print(row, flush=True)
                        out.append(row)
    return out


def write(rows: list[dict], stem: str) -> str:
    keys = sorted({(r["method"], r["step"]) for r in rows}, key=lambda k: (METHODS.index(k[0]), str(k[1])))
    cols = sorted({(r["model"], r["state"]) for r in rows}, key=lambda c: (KINDS.index(c[0]), c[1]))
    lines = []
    for dtype in ("float32", "float64"):
        lines += [f"**{dtype}**", "", "| method | h | " + " | ".join(f"{m} {s}" for m, s in cols) + " |",
                  "|---|---|" + "---:|" * len(cols)]
        for method, h in keys:
            cells = []
            for m, s in cols:
                hit = [r for r in rows if (r["model"], r["state"], r["dtype"], r["method"], r["step"]) ==
                       (m, s, dtype, method, h)]
                cells.append(f"{hit[0]['cosine']:.4f}" if hit else "")
            lines.append(f"| {method} | {h} | " + " | ".join(cells) + " |")
        lines.append("")
    report.write_csv(report.RESULTS / f"{stem}.csv", rows)
    title = ("Cosine of each estimator's parameter gradient with exact's (1 = same direction), one batch of 64 "
             "zero-background 20x20 digits; rfd: median over draws of its random signs.")
    return report.write_markdown(report.RESULTS / f"{stem}.md", title, lines[:-1], report.command_line())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--sweep", action="store_true", help="cosine against the step h instead of the default step")
    # c * eps_fp32^(1/3) * RMS(x) for c = 1/4, 1, 4 (the "auto" rule of central and rfd), 16, 64; RMS = 0.19 here
    p.add_argument("--steps", nargs="+", type=float, default=[2.3e-4, 9.3e-4, 3.7e-3, 1.5e-2, 6e-2])
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args)
    print(write(rows, "estimator_step_sweep" if args.sweep else "estimator_agreement"))


if __name__ == "__main__":
    main()
