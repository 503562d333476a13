"""Ahead-of-time builds of the Triton head kernels for CUDA GPUs, with no GPU (run by tests/ops/test_triton_aot.py).

Usage: python -m tests.ops.aot_builds OUT.json       (TRITON_INTERPRET must be unset: the interpreter
replaces ``triton.jit`` functions, and only real JIT functions can be compiled)

The build set, as issue 14 counts it: {forward, backward} kernel x {fp32, bf16, fp64} logit rows x
BLOCK {16, 1024, 4096} x {sm_80, sm_90} = 36 builds. Each is the configuration a GPU launch uses
(``triton_head.forward_constants`` / ``backward_constants`` with one row per program, libdevice exp,
``num_warps(BLOCK)``) with the target / CE variant on (the regulariser's, the larger kernel), 16-byte
aligned pointers and a row width that is a multiple of 16 (how Triton specialises the launches of
these widths at run time). ``triton.compile`` with a ``GPUTarget`` runs the whole pipeline down to
a cubin with the ptxas of triton's wheel. Spills are read twice: ``cuobjdump -res-usage`` (also in
the wheel) on the cubin gives REG, STACK and LOCAL, and ``ptxas -v`` on the build's PTX, with the
options Triton passes it, prints the spill stores and loads. The second is needed: ptxas 13 puts
spilled registers in the stack frame, so a kernel forced to spill (BLOCK 4096 of fp64 on one warp)
shows STACK 6096 and LOCAL 0 in cuobjdump, while ptxas reports its spill bytes.

Triton caches compiled kernels by source, options and target (``TRITON_CACHE_DIR``, default
``~/.triton/cache``): a rerun with unchanged kernels only reads the cubins back.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ARCHS = (80, 90)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
BLOCKS = (16, 1024, 4096)
KERNELS = ("forward", "backward")
#: The pointer arguments that hold logit rows (the row dtype); the other pointers hold per-row
#: statistics and gradients in the accumulation dtype, except the int64 targets.
ROW_POINTERS = {"z0_ptr", "z1_ptr", "dz0_ptr", "dz1_ptr"}
_POINTER_TYPE = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float64: "*fp64"}


def builds():
    """Every (kernel, dtype name, block, arch) of the build set."""
    return list(itertools.product(KERNELS, DTYPES, BLOCKS, ARCHS))


def build_id(kernel: str, dtype: str, block: int, arch: int) -> str:
    return f"{kernel}-{dtype}-block{block}-sm{arch}"


def _signature(fn, constants: dict, row_dtype: torch.dtype, acc: torch.dtype) -> dict:
    kinds = {}
    for name in fn.arg_names:
        if name in constants:
            kinds[name] = "constexpr"
        elif name == "target_ptr":
            kinds[name] = "*i64"
        elif name.endswith("_ptr"):
            kinds[name] = _POINTER_TYPE[row_dtype if name in ROW_POINTERS else acc]
        else:
            kinds[name] = "i32"
    return kinds


def _aligned(fn, signature: dict) -> dict:
    """Divisibility-16 attributes for the pointers and the row width, as run-time specialisation gives."""
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, kind in signature.items()
            if kind.startswith("*") or name == "n_cols"}


def resource_usage(cubin: bytes, cuobjdump: str) -> dict:
    """REG, STACK, SHARED and LOCAL of the one function in ``cubin``, from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Function \S+:\s*\n\s*(.*)", out)
    if match is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no function:\n{out}")
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", match.group(1))}


def ptxas_spills(ptx: str, arch: int) -> dict:
    """Spill store / load bytes that ``ptxas -v`` reports for ``ptx`` on sm_``arch`` (Triton's options)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    gpu = sm_arch_from_capability(arch)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
                               str(src), "-o", str(src.with_suffix(".o"))], capture_output=True, text=True, check=True)
    match = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", proc.stderr + proc.stdout)
    if match is None:
        raise RuntimeError(f"ptxas -v printed no spill counts:\n{proc.stderr}")
    return {"SPILL_STORES": int(match.group(1)), "SPILL_LOADS": int(match.group(2))}


def compile_one(kernel: str, dtype: str, block: int, arch: int, cuobjdump: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from margreg_fast._ops import triton_head as th
    from margreg_fast._ops.validation import accumulation_dtype

    row_dtype = DTYPES[dtype]
    acc = accumulation_dtype(row_dtype)
    if kernel == "forward":
        fn, constants = th._forward_kernel, th.forward_constants(True, acc, 1, block)
    else:
        fn, constants = th._backward_kernel, th.backward_constants(True, acc, 1, block)
    signature = _signature(fn, constants, row_dtype, acc)
    source = ASTSource(fn, signature, constexprs=constants, attrs=_aligned(fn, signature))
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": th.num_warps(block)})
    return {**resource_usage(compiled.asm["cubin"], cuobjdump), **ptxas_spills(compiled.asm["ptx"], arch)}


def main(out_path: str) -> None:
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes"):
        sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    import triton

    cuobjdump = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    results = {}
    for kernel, dtype, block, arch in builds():
        try:
            results[build_id(kernel, dtype, block, arch)] = {"ok": True, **compile_one(kernel, dtype, block, arch,
                                                                                       cuobjdump)}
        except Exception as err:  # noqa: BLE001 - reported per build; the test fails on it
            results[build_id(kernel, dtype, block, arch)] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    Path(out_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
