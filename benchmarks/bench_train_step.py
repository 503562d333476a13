"""Benchmark of a full CPU training step (forward, loss, backward, SGD step) per penalty estimator.

Models: ``cnn`` = SmallCNN(width 32) on 1x28x28, ``vit`` = SmallViT(dim 64, depth 2, 4 heads, patch 4:
49 tokens, SDPA attention) on 1x28x28; batch 128; eager and ``torch.compile``. Methods: ``plain``
(CE only: ``MarginalDensityRegularizer(penalty="none")``) and the marginal penalty with ``exact``,
``jvp``, ``fd`` and ``central`` (h = 1e-2), all through ``MarginalDensityRegularizer(1.0, ...)``.

Each (model, mode, method) runs in a fresh subprocess, which
1. builds the model and a fixed batch, runs warm-up steps (compilation happens here),
2. measures peak memory: resets the kernel's peak-RSS mark (/proc/self/clear_refs = 5), runs 3 steps
   and reports VmHWM - VmRSS(before); glibc is told to mmap every block >= 64 KiB
   (MALLOC_MMAP_THRESHOLD_) so freed tensors leave the RSS and the growth is the step's working set,
3. times ``--iters`` steps and reports the median wall time.
Ratios are to ``plain`` of the same model and mode from the same run. Methods a model cannot run
(``exact``/``jvp`` on SDPA or under torch.compile) are reported as unsupported with the error.

    python benchmarks/bench_train_step.py [--iters 15] [--models cnn vit] [--modes eager compile]

Writes benchmarks/results/train_step.csv and train_step.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS, MODES = ("cnn", "vit"), ("eager", "compile")
METHODS = ("plain", "exact", "jvp", "fd", "central")
BATCH, STEP, MEMORY_STEPS = 128, 1e-2, 3


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(model_name: str, mode: str, method: str, iters: int, warmup: int) -> dict:
    """Runs in the subprocess: warm up, peak-RSS growth over MEMORY_STEPS steps, median step time."""
    import torch

    from margreg_fast import models
    from margreg_fast.estimators import UnsupportedEstimatorError
    from margreg_fast.regularizer import MarginalDensityRegularizer

    torch.manual_seed(0)
    model = models.SmallCNN(width=32, image_size=28) if model_name == "cnn" else \
        models.SmallViT(dim=64, image_size=28, depth=2, heads=4)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(BATCH, 1, 28, 28, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
    net = torch.compile(model) if mode == "compile" else model
    reg = MarginalDensityRegularizer(0.0 if method == "plain" else 1.0, method="fd" if method == "plain" else method,
                                     step=STEP, penalty="none" if method == "plain" else "marginal")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = reg(net, x, y)
        loss.backward()
        opt.step()

    try:
        for _ in range(warmup):
            step()
    except UnsupportedEstimatorError as err:
        return {"status": "unsupported", "error": str(err)}
    rss_before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(MEMORY_STEPS):
        step()
    peak_growth_mib = (_status_kib("VmHWM") - rss_before) / 1024
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"status": "ok", "median_ms": 1e3 * statistics.median(times), "peak_mib": peak_growth_mib,
            "threads": torch.get_num_threads()}


def run_child(model_name: str, mode: str, method: str, iters: int, warmup: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", model_name, mode, method, "--iters", str(iters), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"status": "failed", "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def goals(rows: list) -> list:
    """The issue's goals, each as (text, measured, target, met)."""
    get = {(r["model"], r["mode"], r["method"]): r for r in rows}

    def val(model, mode, method, key):
        r = get.get((model, mode, method))
        return r[key] if r and r["status"] == "ok" else float("nan")

    fd, plain, exact = (val("cnn", "eager", m, "median_ms") for m in ("fd", "plain", "exact"))
    out = [
        ("CNN eager: fd time / plain time", fd / plain, "<= 2.5"),
        ("CNN eager: fd time / exact time", fd / exact, "<= 1.0"),
        ("CNN eager: fd peak RSS growth / exact", val("cnn", "eager", "fd", "peak_mib") / val("cnn", "eager", "exact", "peak_mib"), "<= 0.85"),
        ("CNN: compiled fd time / eager exact time", val("cnn", "compile", "fd", "median_ms") / exact, "<= 0.75"),
        ("ViT eager: fd time / plain time (exact cannot run)", val("vit", "eager", "fd", "median_ms") / val("vit", "eager", "plain", "median_ms"), "report"),
        ("ViT compiled: fd time / plain time", val("vit", "compile", "fd", "median_ms") / val("vit", "compile", "plain", "median_ms"), "report"),
    ]
    return [(text, value, target, target == "report" or value <= float(target.split()[-1])) for text, value, target in out]


def write_results(rows: list, out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["model", "mode", "method", "status", "median_ms", "time_ratio", "peak_mib", "memory_ratio", "error"]
    with open(out_dir / "train_step.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| model | mode | method | median step (ms) | x plain | peak RSS growth (MiB) | x plain |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['model']} | {r['mode']} | {r['method']} | {r['median_ms']:.1f} | {r['time_ratio']:.2f} | "
                         f"{r['peak_mib']:.1f} | {r['memory_ratio']:.2f} |")
        else:
            lines.append(f"| {r['model']} | {r['mode']} | {r['method']} | {r['status']} | | | |")
    lines += ["", "| goal | measured | target | met |", "|---|---:|---|---|"]
    lines += [f"| {t} | {v:.2f} | {target} | {'yes' if ok else 'NO'} |" for t, v, target, ok in goals(rows)]
    text = "\n".join(lines) + "\n"
    (out_dir / "train_step.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "MODE", "METHOD"))
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=None, help="default: 3 eager, 8 compiled")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.child:
        model, mode, method = args.child
        print(json.dumps(child(model, mode, method, args.iters, args.warmup)))
        return
    rows = []
    for model in args.models:
        for mode in args.modes:
            base = None
            for method in ["plain"] + [m for m in args.methods if m != "plain"]:
                warmup = args.warmup if args.warmup is not None else (8 if mode == "compile" else 3)
                r = {"model": model, "mode": mode, "method": method, **run_child(model, mode, method, args.iters, warmup)}
                if method == "plain":
                    base = r
                if r["status"] == "ok" and base and base["status"] == "ok":
                    r["time_ratio"] = r["median_ms"] / base["median_ms"]
                    r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
                rows.append(r)
                shown = (f"{r['median_ms']:8.1f} ms  x{r.get('time_ratio', float('nan')):.2f}  "
                         f"peak +{r['peak_mib']:.1f} MiB  x{r.get('memory_ratio', float('nan')):.2f}"
                         if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')[:150]}")
                print(f"{model:4s} {mode:8s} {method:8s} {shown}", flush=True)
    print(write_results(rows, args.out))


if __name__ == "__main__":
    main()
