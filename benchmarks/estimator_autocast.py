"""Under bf16 autocast: the direction of the penalty's parameter gradient for each option, and its cost.

For each smooth model (random init, train mode, batch 4 of uniform [0, 1) images): the parameter
gradient of the mean marginal penalty under ``torch.autocast('cpu', dtype=torch.bfloat16)``, by

* ``bf16 passes, old step``: the default estimator with every pass under autocast (the model wrapped
  in a module whose forward runs under autocast, so the library sees bf16 logits and no outer
  autocast) and the step of the rule before the curvature bound (4 eps^(1/3) RMS(x) of bf16 logits
  = 0.79 RMS(x));
* ``bf16 passes, auto``: every pass under autocast, the step rule "auto" for bf16 logits
  (min(eps^(1/2) RMS(x), 0.03 / ||g||));
* ``fp32 passes`` (the library's path): the forward at x in bf16 (the CE's), the penalty's passes in
  fp32 with autocast off, as probes of it (margreg_fast/_estimators/core.py);
* ``exact, bf16 passes`` and ``exact, fp32 passes``;

and, as the baseline of the acceptance bound, the default estimator in fp32 without autocast. Each
is compared by its cosine with the fp32 reference: exact in fp32, or central in fp32 on models whose
SDPA attention has no double backward. Estimators with random signs: the median over --draws draws.

Cost: a full training step (loss.backward() included) under autocast per option, as a ratio to the
plain bf16 step (cross-entropy only) timed in the same run; medians of --reps repetitions. On this
CPU bf16 is emulated (no native bf16 matrix units), so the ratios show the pass counts, not a GPU's
bf16-to-fp32 speed ratio.

    python benchmarks/estimator_autocast.py [--models ...] [--draws 5] [--reps 5]

Writes benchmarks/results/estimator_autocast.{csv,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast import MarginalDensityRegularizer, UnsupportedEstimatorError, marginal_density_penalty  # noqa: E402
from tests.zoo.models import build_at  # noqa: E402

SEED = 1234
#: (model, input size); the ViT runs its attention through SDPA (timm's fused_attn).
MODELS = {"efficientnet_b0": 64, "convnext_atto": 64, "vit_tiny_patch16_224": 64, "efficientnet_b0@128": 128}
#: option -> (estimator, penalty passes in fp32 under autocast, step)
OPTIONS = {
    "bf16 passes, old step": ("rfd", False, "old"),
    "bf16 passes, auto": ("rfd", False, "auto"),
    "fp32 passes": ("rfd", True, "auto"),
    "exact, bf16 passes": ("exact", False, "auto"),
    "exact, fp32 passes": ("exact", True, "auto"),
}


def _old_step(x: torch.Tensor) -> float:
    return 4 * torch.finfo(torch.bfloat16).eps ** (1 / 3) * x.flatten(1).pow(2).mean(1).sqrt().mean().item()


class AutocastPasses(torch.nn.Module):
    """``model`` with its forward under bf16 autocast: every pass the library makes runs in bf16."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x)


def penalty(model, x, method: str, fp32_passes: bool, step, seed: int, autocast: bool) -> torch.Tensor:
    """The mean penalty: without autocast (fp32), under autocast (fp32 passes), or every pass in bf16."""
    torch.manual_seed(seed)
    step = _old_step(x) if step == "old" else step
    if autocast and not fp32_passes:
        return marginal_density_penalty(AutocastPasses(model), x, estimator=method, step=step).float()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return marginal_density_penalty(model, x, estimator=method, step=step).float()


def gradient(model, value: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double() for p, g in zip(params, grads)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=0).item()


def reference(model, x):
    """(the fp32 reference gradient, its name): exact, or central where exact is refused."""
    try:
        return gradient(model, penalty(model, x, "exact", True, "auto", SEED, False)), "exact"
    except UnsupportedEstimatorError:
        return gradient(model, penalty(model, x, "central", True, "auto", SEED, False)), "central"


def step_time(model, x, y, method, fp32_passes, reps) -> float:
    times = []
    for r in range(reps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        # bf16 passes: the wrapper puts every pass under autocast, and no outer autocast is active
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=method is None or fp32_passes):
            if method is None:
                loss = F.cross_entropy(model(x), y)
            else:
                loss, _ = MarginalDensityRegularizer(1.0, estimator=method)(
                    model if fp32_passes else AutocastPasses(model), x, y)
        loss.backward()
        if r:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, cells, cost_cells = [], [], []
    for key in args.models:
        name, size = key.split("@")[0], MODELS[key]
        torch.manual_seed(0)
        model = build_at(name, size, drop=False)
        gen = torch.Generator().manual_seed(1)
        x, y = torch.rand(4, 3, size, size, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        ref, ref_name = reference(model, x)
        fp32_default = statistics.median(
            cosine(gradient(model, penalty(model, x, "rfd", True, "auto", SEED + d, False)), ref)
            for d in range(args.draws))
        row = {"model": name, "size": size, "reference": f"fp32 {ref_name}", "fp32 default": fp32_default}
        for option, (method, fp32_passes, step) in OPTIONS.items():
            draws = 1 if method == "exact" else args.draws
            try:
                row[option] = statistics.median(
                    cosine(gradient(model, penalty(model, x, method, fp32_passes, step, SEED + d, True)), ref)
                    for d in range(draws))
            except UnsupportedEstimatorError:
                row[option] = float("nan")
        plain = step_time(model, x, y, None, True, args.reps)
        timed = {"fp32 passes": ("rfd", True), "bf16 passes": ("rfd", False), "exact, fp32 passes": ("exact", True)}
        for label, (method, fp32_passes) in timed.items():
            try:
                row[f"cost {label}"] = step_time(model, x, y, method, fp32_passes, args.reps) / plain
            except UnsupportedEstimatorError:
                row[f"cost {label}"] = float("nan")
        rows.append(row)
        cells.append([name, str(size), row["reference"], f"{fp32_default:.3f}"]
                     + [f"{row[o]:.3f}" for o in OPTIONS]
                     + [f"{row['fp32 passes'] / fp32_default:.2f}"])
        cost_cells.append([name, str(size)] + [f"{row['cost ' + k]:.2f}" for k in timed])
        print(" | ".join(cells[-1]), " || ", " | ".join(cost_cells[-1]), flush=True)
    lines = ["**Cosine with the fp32 reference** (median over sign draws)", ""]
    lines += report.table(["model", "px", "reference", "fp32 default", *OPTIONS, "fp32 passes / fp32 default"],
                          cells, "lllrrrrrrr")
    lines += ["", "**Cost of a training step under bf16 autocast**, ratio to the plain bf16 step (CE only), "
              "medians", ""]
    lines += report.table(["model", "px", "default, fp32 passes (the library)", "default, bf16 passes",
                           "exact, fp32 passes"], cost_cells, "llrrr")
    title = (f"The penalty's parameter gradient under torch.autocast('cpu', dtype=torch.bfloat16): random init, train "
             f"mode, batch 4, {args.draws} sign draws, {args.reps} timing repetitions, 1 thread on a shared CPU.")
    print(report.publish("estimator_autocast", rows, title, lines))


if __name__ == "__main__":
    main()
