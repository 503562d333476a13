"""Benchmark of a full training step (forward, loss, backward, SGD step) per penalty estimator, CPU or CUDA.

Models: ``cnn`` = SmallCNN(width 32) on 1x28x28, batch 128; ``vit`` = SmallViT(dim 64, depth 2, 4 heads,
patch 4: 49 tokens, SDPA attention) on 1x28x28, batch 128; ``resnet`` = ResidualCNN(width 16, 2 basic
blocks, BatchNorm in train mode, SiLU) on 3x32x32, batch 64; timm's ``resnet18`` (BatchNorm, ReLU, max
pooling) and ``convnext_atto`` (LayerNorm, GELU) as released, random init, train mode, on 3x224x224,
batch 8 (``--models resnet18 convnext_atto``, written to ``--name train_step_timm``); ``papercnn`` =
the claims' PaperCNN (width 8, ReLU, max pooling) on 1x56x28 BlockMNIST-sized inputs, batch 64, the
cost axis of the claims' fractions and lazy steps (``--models papercnn``, ``--name train_step_claims``);
eager and ``torch.compile``. Methods:
``plain`` (CE only: ``MarginalDensityRegularizer(penalty_kind="none")``) and the marginal penalty with
``exact``, ``jvp``, ``fd``, ``central`` and ``rfd`` (the default) at the library's default step, all
through ``MarginalDensityRegularizer``; ``floor`` is the structural floor of fd and rfd written in
plain torch ops with no library code: a forward at x, a backward to x only, a forward at x + h v and
the training backward through both graphs. ``rfd@f`` is the default estimator with the regulariser's
``fraction=f`` (the penalty on max(1, round(f B)) samples, the CE on the whole batch) and ``floor@f``
its floor: with train-mode BatchNorm a forward of the whole batch for the CE plus the floor's passes on
the subset, without it a forward of the rest of the batch plus the floor's passes on the subset,
whose forward serves its CE too. ``rfd%k``
(and ``floor%k``) is lazy regularisation: one step of rfd (floor) then k - 1 plain steps, timed
together and reported per step, so its median is the cost of a step averaged over the schedule.

* Time: for each (model, mode) one process builds the model (and one compiled wrapper), warms every
  method up (compilation happens here), then runs ``--rounds`` rounds, each timing one step of every
  method in turn; the median per method is reported. Interleaving makes the ratios robust to the
  load of a shared machine changing during the run.
* Peak memory: each (model, mode, method) runs in a fresh subprocess that warms up, resets the
  kernel's peak-RSS mark (/proc/self/clear_refs = 5), runs 3 steps and reports VmHWM - VmRSS(before).
  glibc is told to mmap every block >= 64 KiB (MALLOC_MMAP_THRESHOLD_) so freed tensors leave the
  RSS and the growth is the step's working set. On CUDA (``--device cuda``) it is the growth of
  ``torch.cuda.max_memory_allocated`` over the same steps.
* Threads: ``--threads`` intra-op threads (default 1). On a shared, oversubscribed CPU multi-threaded
  OpenMP regions mostly measure barrier waits on descheduled threads (a 128x10 log_softmax took
  34 ms there); one thread measures the work each method does.

Ratios are to ``plain`` of the same model and mode. Methods a model cannot run (``exact``/``jvp``
on SDPA or under torch.compile) are reported as unsupported.

    python benchmarks/bench_train_step.py [--rounds 10] [--models cnn vit resnet] [--modes eager compile] [--device cuda]
    python benchmarks/bench_train_step.py --models resnet18 convnext_atto --modes eager --methods floor exact rfd \
        --name train_step_timm

Writes OUT/NAME[_cuda].csv and OUT/NAME[_cuda].md (the tables and the command that produced them;
default OUT: benchmarks/results, NAME: train_step).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import report  # noqa: E402
from margreg_fast.kit import models  # noqa: E402
from margreg_fast import DEFAULT_ESTIMATOR, DEFAULT_STEP, MarginalDensityRegularizer, UnsupportedEstimatorError  # noqa: E402

MODELS, MODES = ("cnn", "vit", "resnet"), ("eager", "compile")
#: The regulariser's penalised fractions below 1 (issue 16), each timed with the default estimator next to its floor.
FRACTIONS = (0.5, 0.25, 0.125)
#: Lazy intervals k (the penalty on every k-th step): not in the default run (``--methods rfd%4``).
LAZY = (4, 8)
METHODS = (("plain", "floor", "exact", "jvp", "fd", "central", "rfd")
           + tuple(f"{kind}@{f:g}" for f in FRACTIONS for kind in ("floor", DEFAULT_ESTIMATOR)))
LAZY_METHODS = tuple(f"{kind}%{k}" for k in LAZY for kind in ("floor", DEFAULT_ESTIMATOR))
#: Real models from timm (``--models``), not in the default run.
TIMM_MODELS = ("resnet18", "convnext_atto")
MEMORY_STEPS = 3
BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
#: The claims' model (``margreg-fast claims``), not in the default run.
CLAIMS_MODELS = ("papercnn",)
#: (batch, input shape) per model
SHAPES = {"cnn": (128, (1, 28, 28)), "vit": (128, (1, 28, 28)), "resnet": (64, (3, 32, 32)),
          "resnet18": (8, (3, 224, 224)), "convnext_atto": (8, (3, 224, 224)), "papercnn": (64, (1, 56, 28))}


def _timm_model(name: str):
    from tests.timm_import import import_timm

    return import_timm().create_model(name, pretrained=False, num_classes=10)


def build(model_name: str, mode: str, device: str):
    """(model, the module to call: compiled or not, batch x, labels y) on ``device``, seeded."""
    torch.manual_seed(0)
    model = {"cnn": lambda: models.SmallCNN(width=32, image_size=28),
             "vit": lambda: models.SmallViT(dim=64, image_size=28, depth=2, heads=4),
             "resnet": lambda: models.ResidualCNN(in_channels=3, width=16, blocks=2, activation="silu"),
             "papercnn": lambda: models.PaperCNN(width=8, image_size=(56, 28)),
             **{name: (lambda name=name: _timm_model(name)) for name in TIMM_MODELS}}[model_name]()
    batch, shape = SHAPES[model_name]
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    model, x, y = model.to(device), x.to(device), y.to(device)
    return model, (torch.compile(model) if mode == "compile" else model), x, y


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _secant_penalty(net, x_in, z0, h: float):
    """((E(x + h v) - E(x)) / h)^2 per sample from the logits z0 = net(x_in): a backward to x, a forward at x + h v."""
    e0 = torch.logsumexp(z0, dim=1)
    (g,) = torch.autograd.grad(e0.sum(), x_in, retain_graph=True)
    v = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x_in.dim() - 1)))
    e1 = torch.logsumexp(net(x_in.detach() + h * v), dim=1)
    return ((e1 - e0) / h) ** 2


def _has_train_mode_batchnorm(net) -> bool:
    """Does ``net``'s forward couple the samples of a batch? Among this benchmark's models (timm's included),
    exactly when it holds a train-mode BatchNorm: what the regulariser detects for ``batch_coupled=None``."""
    return any(isinstance(m, BATCH_NORMS) and m.training for m in net.modules())


def floor_loss(net, x, y, fraction: float = 1.0, h: float = 1e-2):
    """CE + the secant penalty in plain torch ops: the passes fd and rfd cannot avoid.

    At fraction 1 the forward at x serves the CE and the penalty (F + B_x + F + B over two graphs).
    Below 1 the first m = max(1, round(fraction B)) samples are penalised. A model whose forward couples
    the samples (train-mode BatchNorm) takes a forward of the whole batch for the CE, and the penalty
    a forward of the subset of its own, a backward to it and a forward at x + h v (a floor in cost,
    not in meaning: these plain passes normalise the subset with its own statistics). A sample-wise
    model takes a forward of the other B - m samples for their CE and one of the subset that serves
    its CE and the penalty, as at fraction 1.
    """
    if fraction == 1.0:
        x_in = x.detach().requires_grad_(True)
        z0 = net(x_in)
        return torch.nn.functional.cross_entropy(z0, y) + _secant_penalty(net, x_in, z0, h).mean()
    m = max(1, round(fraction * x.shape[0]))  # the regulariser's subset size
    x_sub = x[:m].detach().requires_grad_(True)
    if _has_train_mode_batchnorm(net):
        return torch.nn.functional.cross_entropy(net(x), y) + _secant_penalty(net, x_sub, net(x_sub), h).mean()
    z_sub = net(x_sub)
    ce = torch.nn.functional.cross_entropy(torch.cat([z_sub, net(x[m:])]), y)
    return ce + _secant_penalty(net, x_sub, z_sub, h).mean()


def split_method(method: str):
    """("rfd", 0.25) from "rfd@0.25"; (method, 1.0) without a fraction."""
    name, _, fraction = method.partition("@")
    return name, float(fraction) if fraction else 1.0


def make_step(model, net, x, y, method: str):
    """One training step of ``method`` (lr 0: the weights, hence the work, stay the same); for a lazy
    ``method%k``, one step of ``method`` then k - 1 plain ones, with ``.steps = k`` (the timers divide by it)."""
    method, _, every = method.partition("%")
    if every:
        penalised, plain = make_step(model, net, x, y, method), make_step(model, net, x, y, "plain")

        def lazy_steps():
            penalised()
            for _ in range(int(every) - 1):
                plain()
        lazy_steps.steps = int(every)
        return lazy_steps
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method, fraction = split_method(method)
    if method == "floor":
        def floor_step():
            opt.zero_grad(set_to_none=True)
            floor_loss(net, x, y, fraction).backward()
            opt.step()
        return floor_step
    reg = MarginalDensityRegularizer(0.0 if method == "plain" else 1.0, estimator=DEFAULT_ESTIMATOR if method == "plain"
                                     else method, step=DEFAULT_STEP, penalty_kind="none" if method == "plain" else "marginal",
                                     fraction=fraction, generator=torch.Generator(x.device).manual_seed(0))

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = reg(net, x, y)
        loss.backward()
        opt.step()
    return step


def warm(step, count: int):
    """Run warm-up steps; the error text if the method is unsupported on this model, else None."""
    try:
        for _ in range(count):
            step()
    except UnsupportedEstimatorError as err:
        return str(err)
    return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(model_name: str, mode: str, method: str, warmup: int, device: str) -> dict:
    """In a fresh process: peak-RSS (CUDA: peak allocated) growth over MEMORY_STEPS steps after warm-up."""
    model, net, x, y = build(model_name, mode, device)
    step = make_step(model, net, x, y, method)
    error = warm(step, warmup)
    if error:
        return {"status": "unsupported", "error": error}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(MEMORY_STEPS):
            step()
        torch.cuda.synchronize()
        return {"status": "ok", "peak_mib": (torch.cuda.max_memory_allocated() - before) / 2**20}
    rss_before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(MEMORY_STEPS):
        step()
    return {"status": "ok", "peak_mib": (_status_kib("VmHWM") - rss_before) / 1024}


def measure_memory(model_name: str, mode: str, method: str, warmup: int, threads: int, device: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--memory-child", model_name, mode, method, "--warmup", str(warmup),
           "--threads", str(threads), "--device", device]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"status": "failed", "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_times(model_name: str, mode: str, methods, warmup: int, rounds: int, device: str) -> dict:
    """Median step time (ms) per method, interleaved rounds in this process; error text if unsupported."""
    model, net, x, y = build(model_name, mode, device)
    steps, out = {}, {}
    for method in methods:
        step = make_step(model, net, x, y, method)
        error = warm(step, warmup)
        if error:
            out[method] = {"status": "unsupported", "error": error}
        else:
            steps[method] = step
    times = {m: [] for m in steps}
    for _ in range(rounds):
        for method, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[method].append((time.perf_counter() - t0) / getattr(step, "steps", 1))
    for method, ts in times.items():
        out[method] = {"status": "ok", "median_ms": 1e3 * statistics.median(ts)}
    return out


def goals(rows: list) -> list:
    """The issue's goals, each as (text, measured, target, met)."""
    get = {(r["model"], r["mode"], r["method"]): r for r in rows}

    def val(model, mode, method, key):
        r = get.get((model, mode, method))
        return r[key] if r and r["status"] == "ok" and key in r else float("nan")

    def ms(model, mode, method):
        return val(model, mode, method, "median_ms")

    def mem(model, method):
        return val(model, "eager", method, "peak_mib") / val(model, "eager", "exact", "peak_mib")

    d = DEFAULT_ESTIMATOR
    out = [  # (model, goal, measured, target)
        ("resnet", f"ResNet-BN eager: {d} time / plain time", ms("resnet", "eager", d) / ms("resnet", "eager", "plain"),
         "<= 2.5"),
        ("resnet", "ResNet-BN eager: floor time / plain time",
         ms("resnet", "eager", "floor") / ms("resnet", "eager", "plain"), "report"),
        ("resnet", f"ResNet-BN eager: {d} time / exact time", ms("resnet", "eager", d) / ms("resnet", "eager", "exact"),
         "<= 0.85"),
        ("resnet", f"ResNet-BN eager: {d} peak memory / exact", mem("resnet", d), "<= 0.85"),
        ("cnn", f"CNN eager: {d} time / plain time", ms("cnn", "eager", d) / ms("cnn", "eager", "plain"), "<= 2.6"),
        ("cnn", "CNN eager: floor time / plain time", ms("cnn", "eager", "floor") / ms("cnn", "eager", "plain"),
         "report"),
        ("cnn", f"CNN eager: {d} peak memory / exact", mem("cnn", d), "<= 0.85"),
        ("vit", f"ViT eager: {d} time / plain time (exact cannot run)",
         ms("vit", "eager", d) / ms("vit", "eager", "plain"), "report"),
        ("vit", f"ViT compiled: {d} time / plain time", ms("vit", "compile", d) / ms("vit", "compile", "plain"),
         "report"),
        ("cnn", f"CNN eager: {d}@0.25 time / plain time", ms("cnn", "eager", f"{d}@0.25") / ms("cnn", "eager", "plain"),
         "<= 1.5"),
        ("resnet", f"ResNet-BN eager: {d}@0.25 time / plain time",
         ms("resnet", "eager", f"{d}@0.25") / ms("resnet", "eager", "plain"), "<= 1.7"),
    ]
    for model in ("cnn", "resnet"):
        for f in FRACTIONS:
            out.append((model, f"{model} eager: {d}@{f:g} time / its floor's",
                        ms(model, "eager", f"{d}@{f:g}") / ms(model, "eager", f"floor@{f:g}"), "report"))
    ran = {r["model"] for r in rows}
    # a goal whose methods this run did not time (``--methods``) is left out, not reported as missed
    return [(text, value, target, target == "report" or value <= float(target.split()[-1]))
            for model, text, value, target in out if model in ran and value == value]


def write_results(rows: list, out_dir: Path, conditions: str, device: str, command: str, name: str) -> str:
    name = name if device == "cpu" else f"{name}_{device}"
    fields = ["model", "mode", "method", "status", "median_ms", "time_ratio", "peak_mib", "memory_ratio", "error"]
    report.write_csv(out_dir / f"{name}.csv", rows, fields)
    memory = "peak RSS growth" if device == "cpu" else "peak CUDA memory growth"
    lines = [f"| model | mode | method | median step (ms) | x plain | {memory} (MiB) | x plain |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['model']} | {r['mode']} | {r['method']} | {r['median_ms']:.1f} | {r['time_ratio']:.2f} | "
                         f"{r.get('peak_mib', float('nan')):.1f} | {r.get('memory_ratio', float('nan')):.2f} |")
        else:
            lines.append(f"| {r['model']} | {r['mode']} | {r['method']} | {r['status']} | | | |")
    met = goals(rows)
    if met:
        lines += ["", "| goal | measured | target | met |", "|---|---:|---|---|"]
        lines += [f"| {t} | {v:.2f} | {target} | {'yes' if ok else 'NO'} |" for t, v, target, ok in met]
    ran = list(dict.fromkeys(r["model"] for r in rows))
    shapes = "; ".join(f"{m} batch {b} of {'x'.join(map(str, shape))}" for m, (b, shape) in SHAPES.items() if m in ran)
    title = f"Training step ({shapes}), {device.upper()} ({conditions})."
    return report.write_markdown(out_dir / f"{name}.md", title, lines, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "MODE", "METHOD"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=None, help="default: 2 eager, 6 compiled")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS + TIMM_MODELS + CLAIMS_MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + LAZY_METHODS)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="output directory (default: %(default)s)")
    parser.add_argument("--name", default="train_step", help="result file name, without suffix (default: %(default)s)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        model, mode, method = args.memory_child
        print(json.dumps(memory_child(model, mode, method, args.warmup, args.device)))
        return
    methods = ["plain"] + [m for m in args.methods if m != "plain"]
    rows = []
    for model in args.models:
        for mode in args.modes:
            warmup = args.warmup if args.warmup is not None else (6 if mode == "compile" else 2)
            timed = measure_times(model, mode, methods, warmup, args.rounds, args.device)
            for method in methods:
                r = {"model": model, "mode": mode, "method": method, **timed[method]}
                if r["status"] == "ok" and not args.no_memory:
                    mem = measure_memory(model, mode, method, warmup, args.threads, args.device)
                    if mem["status"] == "ok":
                        r["peak_mib"] = mem["peak_mib"]
                rows.append(r)
            base = next(r for r in rows if (r["model"], r["mode"], r["method"]) == (model, mode, "plain"))
            for r in rows[-len(methods):]:
                if r["status"] == "ok":
                    r["time_ratio"] = r["median_ms"] / base["median_ms"]
                    if "peak_mib" in r and "peak_mib" in base:
                        r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
                shown = (f"{r['median_ms']:8.1f} ms  x{r['time_ratio']:.2f}  peak +{r.get('peak_mib', float('nan')):.1f} MiB"
                         f"  x{r.get('memory_ratio', float('nan')):.2f}" if r["status"] == "ok"
                         else f"{r['status']}: {r.get('error', '')[:150]}")
                print(f"{model:4s} {mode:8s} {r['method']:8s} {shown}", flush=True)
    conditions = (f"{args.threads} intra-op thread(s), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
                  f"at the end, median of {args.rounds} interleaved rounds")
    print(write_results(rows, args.out, conditions, args.device, report.command_line(), args.name))


if __name__ == "__main__":
    main()
