"""Benchmark of the fused energy head: fwd+bwd of ``energy_difference`` with targets, per backend.

For each (B, C) case the script times, in the same run and on the same tensors:

* ``floor``: two plain ``torch.logsumexp`` calls (forward only), the least any head could cost;
* fwd+bwd of ``energy_difference(z0, z1, target, backend=...)`` (D and the CE of z0, the call the
  estimators make) for ``native`` and ``torch`` on CPU
  (and ``triton`` and ``torch`` on CUDA when a GPU is present).

Times are medians over repeats; each is also given as a ratio to the floor, and the torch time as a
ratio to each fast backend (speed-up). Prints a table and writes, per device, OUT/NAME.csv and
OUT/NAME.md (the table and the command that produced it), NAME naming the run configuration:
head_<device>[_nopin][_<N>thread] (default OUT: benchmarks/results).

Allocator noise: a fwd+bwd returns two fresh (B, C) gradients per call. With glibc's default
malloc, freed blocks of some MB are handed back to the OS and the next call page-faults them in
again (in this VM that added 2-14 ms per call at (4096, 1000), varying run to run, so the ratio to
the floor swung between 1.0x and 2.7x). By default the script therefore pins malloc's thresholds
(mallopt: no trimming, mmap only above 32 MB) for all timed functions alike, floor included;
``--no-pin-malloc`` times the default allocator. Users can do the same with the environment
variables MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_, or with jemalloc/tcmalloc.

    python benchmarks/bench_head.py [--repeats 30] [--threads N] [--no-pin-malloc] [--device cpu|cuda] [--out DIR]
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import margreg_fast as mf  # noqa: E402
from benchmarks import report  # noqa: E402

CASES: List[Tuple[int, int]] = [(4096, 10), (4096, 1000), (512, 32000)]


def pin_malloc() -> bool:
    """Keep freed memory in the process (glibc mallopt: M_TRIM_THRESHOLD 1 GiB, M_MMAP_THRESHOLD at
    its 32 MiB maximum), so calls are not timed page-faulting their outputs in. False if not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 32 << 20))


def make_inputs(batch: int, classes: int, device: torch.device, seed: int = 0):
    """Logits of scale 5, a small step apart, and random targets (leaf tensors requiring grad)."""
    gen = torch.Generator().manual_seed(seed)
    z0 = torch.randn(batch, classes, generator=gen) * 5.0
    z1 = z0 + 1e-2 * torch.randn(batch, classes, generator=gen)
    target = torch.randint(0, classes, (batch,), generator=gen)
    return (z0.to(device).requires_grad_(), z1.to(device).requires_grad_(), target.to(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(fns: Dict[str, Callable[[], None]], device: torch.device, repeats: int,
                 min_seconds: float = 0.02) -> Dict[str, float]:
    """Median seconds per call of each function, sampled round-robin; a sample averages enough
    calls to last about ``min_seconds``."""
    inner = {}
    for name, fn in fns.items():
        fn()  # warm-up
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        inner[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-7)))
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def floor_fn(z0, z1) -> Callable[[], None]:
    a, b = z0.detach(), z1.detach()

    def run():
        torch.logsumexp(a, 1)
        torch.logsumexp(b, 1)

    return run


def head_fn(z0, z1, target, backend: str) -> Callable[[], None]:
    def run():
        z0.grad = z1.grad = None
        out = mf.energy_difference(z0, z1, target, backend=backend)
        (out.difference.sum() + out.ce.sum()).backward()

    return run


def backends_for(device: torch.device) -> List[str]:
    fast = "native" if device.type == "cpu" else "triton"
    return [fast, "torch"]


def run(device: torch.device, repeats: int, malloc_pinned: bool = False) -> List[dict]:
    """Per case, the floor and every backend are timed round-robin (one sample each per repeat), so
    load from other processes hits them alike; medians are taken per function."""
    rows = []
    for batch, classes in CASES:
        z0, z1, target = make_inputs(batch, classes, device)
        fns = {"floor": floor_fn(z0, z1)}
        fns.update({name: head_fn(z0, z1, target, name) for name in backends_for(device)})
        times = median_times(fns, device, repeats)
        floor = times.pop("floor")
        for name, seconds in times.items():
            rows.append({
                "device": device.type,
                "threads": torch.get_num_threads(),
                "malloc_pinned": malloc_pinned,
                "B": batch,
                "C": classes,
                "backend": name,
                "fwd_bwd_ms": round(seconds * 1e3, 4),
                "floor_ms": round(floor * 1e3, 4),
                "ratio_to_floor": round(seconds / floor, 3),
                "speedup_vs_torch": round(times["torch"] / seconds, 3),
            })
    return rows


def print_table(rows: List[dict]) -> None:
    header = f"{'device':6} {'B':>5} {'C':>6} {'backend':8} {'fwd+bwd ms':>11} {'floor ms':>9} {'x floor':>8} {'speed-up vs torch':>18}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['device']:6} {r['B']:>5} {r['C']:>6} {r['backend']:8} {r['fwd_bwd_ms']:>11.3f} "
              f"{r['floor_ms']:>9.3f} {r['ratio_to_floor']:>8.2f} {r['speedup_vs_torch']:>18.2f}")


def _ms(value: float) -> str:
    """Three significant digits, no exponent."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 \
        else f"{value:.3f}"


def markdown_rows(rows: List[dict]) -> List[str]:
    """One line per (B, C): the fast backend and the torch reference, each in ms and as x floor."""
    fast = rows[0]["backend"]
    by_case = {(r["B"], r["C"], r["backend"]): r for r in rows}
    cases = list(dict.fromkeys((r["B"], r["C"]) for r in rows))
    cells = []
    for batch, classes in cases:
        f, t = by_case[batch, classes, fast], by_case[batch, classes, "torch"]
        cells.append([str(batch), str(classes), _ms(f["fwd_bwd_ms"]), f"{f['ratio_to_floor']:.2f}",
                      _ms(t["fwd_bwd_ms"]), f"{t['ratio_to_floor']:.2f}", f"{f['speedup_vs_torch']:.1f}x"])
    return report.table(["B", "C", f"{fast} ms", "x floor", "torch-reference ms", "x floor", f"{fast} speed-up"],
                        cells, "rrrrrrr")


def config_name(device: torch.device, malloc_pinned: bool, threads) -> str:
    """head_<device>[_nopin][_<N>thread]: one result file per run configuration."""
    return f"head_{device.type}" + ("" if malloc_pinned else "_nopin") + ("" if threads is None else f"_{threads}thread")


def write_results(rows: List[dict], out: Path, name: str, repeats: int, command: str) -> None:
    r = rows[0]
    title = (f"Fused head op on {r['device']}, fwd+bwd of `energy_difference(z0, z1, target)`: median of {repeats}, "
             f"{r['threads']} thread(s), malloc thresholds {'pinned' if r['malloc_pinned'] else 'at glibc defaults'}. "
             "x floor: ratio to two plain `torch.logsumexp` calls (forward only) on the same tensors, in the same run.")
    report.write_csv(out / f"{name}.csv", rows)
    report.write_markdown(out / f"{name}.md", title, markdown_rows(rows), command)
    print(f"wrote {os.path.relpath(out / name)}.{{csv,md}}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed samples per measurement (median taken)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", choices=("cpu", "cuda"), nargs="+", default=None,
                        help="devices to time (default: cpu, and cuda when a GPU is present)")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="output directory (default: %(default)s)")
    parser.add_argument("--no-pin-malloc", action="store_true",
                        help="time with glibc's default malloc thresholds (see allocator noise above)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    malloc_pinned = not args.no_pin_malloc and pin_malloc()
    if not args.no_pin_malloc and not malloc_pinned:
        print("could not pin malloc thresholds (not glibc?): timing the default allocator", file=sys.stderr)

    names = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in map(torch.device, names):
        if device.type == "cuda" and not torch.cuda.is_available():
            print("skipping cuda: no CUDA GPU here", file=sys.stderr)
            continue
        missing = [b for b in backends_for(device) if b not in mf.available_backends(device)]
        if missing:
            print(f"skipping {device}: backend(s) {missing} unavailable", file=sys.stderr)
            continue
        rows = run(device, args.repeats, malloc_pinned)
        print_table(rows)
        write_results(rows, args.out, config_name(device, malloc_pinned, args.threads), args.repeats,
                      report.command_line(None if argv is None else [__file__, *argv]))


if __name__ == "__main__":
    main()
