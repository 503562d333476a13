"""pytest-benchmark suite of the fused energy head (fwd+bwd with targets) and its floor.

Run with ``.venv/bin/python -m pytest benchmarks/test_bench_head.py`` (kept out of tests/ so the
unit suite stays fast). Cases and timed functions are those of bench_head.py: per (B, C), the floor
(two torch.logsumexp calls) and fwd+bwd of energy_difference for each backend on CPU (native, torch)
and, when a GPU is present, on CUDA (triton, torch). Compare within one group: ``--benchmark-group-by=param:case``.
"""
import pytest
import torch

import margreg_fast as mf
from benchmarks.bench_head import CASES, backends_for, floor_fn, head_fn, make_inputs

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
PARAMS = [
    (device, case, name)
    for device in DEVICES
    for case in CASES
    for name in ["floor"] + backends_for(device)
]


@pytest.mark.parametrize(
    "device, case, name", PARAMS, ids=[f"{d.type}-B{c[0]}xC{c[1]}-{n}" for d, c, n in PARAMS]
)
def test_head_fwd_bwd(benchmark, device, case, name):
    if name != "floor" and name not in mf.available_backends(device):
        pytest.skip(f"backend {name} unavailable on {device}")
    z0, z1, target = make_inputs(*case, device)
    fn = floor_fn(z0, z1) if name == "floor" else head_fn(z0, z1, target, name)
    if device.type == "cuda":
        inner = fn

        def fn():
            inner()
            torch.cuda.synchronize()

    benchmark.group = f"{device.type}-B{case[0]}xC{case[1]}"
    benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
