"""The native C++ CPU kernel (margreg_fast/csrc/energy_head.cpp), compiled on first use.

The package ships the C++ source, never a compiled file. The first time the native backend is asked
for (``backend="auto"`` on CPU tensors, ``backend="native"``, :func:`margreg_fast.available_backends`),
this module compiles it with ninja through :func:`torch.utils.cpp_extension.load`, against the torch
that is installed, and loads it: ``torch.ops.margreg_fast.energy_head_forward`` and
``energy_head_backward`` (CPU kernels, registered with torch.library; the fake implementations below
give torch.compile their output shapes, so a compiled graph calls them without a break).

Where: ``$TORCH_EXTENSIONS_DIR`` (else torch's extensions cache, ``~/.cache/torch_extensions``), in a
folder named by :func:`build_name` after everything the binary depends on: the torch version, the
Python version, the instruction set and a hash of the source and flags. The instruction set is chosen
by the CPU that runs it: AVX2 + FMA + F16C code when torch reports AVX2 or AVX512 for this CPU
(``torch.backends.cpu.get_cpu_capability()``; ``ATEN_CPU_CAPABILITY=default`` forces the portable
code), at::vec's portable code otherwise.

Once: the build takes about a minute; meanwhile one line on stderr says so. Another process asking at
the same time waits on torch's file lock in that folder and then loads the same file. A finished
build leaves a stamp beside the library; later processes load it directly (no compiler, no ninja).
Prebuild, e.g. in an image or CI: ``margreg-fast build-native`` (or ``python -m margreg_fast build-native``;
prints the library's path).

No compiler, no ninja, or a failed build: one :class:`NativeBuildWarning` names the cause and the
fix, and the native backend reports itself unavailable, so ``backend="auto"`` uses the torch backend
(same results) and ``backend="native"`` raises ``RuntimeError`` saying why.

The ops:

* ``energy_head_forward(z0, z1, target, ignore_index) -> (D, ce, stats)``: D and ce of shape (B,),
  stats (B, 4) = [m0, log s0, m1, log s1]; all float32 (float64 for float64 logits).
* ``energy_head_backward(z0, z1, target, ignore_index, stats, grad_d, grad_ce) -> (dz0, dz1)``:
  contiguous (B, C) gradients in the logits' dtype.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..validation import accumulation_dtype

SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "energy_head.cpp"
#: What to run once the cause of a failed build is fixed (it also prebuilds for images and CI).
PREBUILD_COMMAND = "python -m margreg_fast build-native"
_AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
_STAMP = "margreg_fast.built"

#: The forward kernel raises ValueError for a target outside [0, C) that is not ignore_index, so the
#: Python-side range check (a reduction and two host reads per call) is skipped for this backend.
CHECKS_TARGET_RANGE = True


class NativeBuildWarning(UserWarning):
    """The native CPU kernel could not be compiled; the torch backend is used instead."""


def instruction_set() -> str:
    """``"avx2"`` where torch reports AVX2 or AVX512 for the running CPU (x86-64), else ``"default"``."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "default"
    return "avx2" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "default"


def compile_flags(isa: str) -> list:
    return ["-O3", "-fopenmp"] + (_AVX2_FLAGS if isa == "avx2" else [])


def build_name(isa: Optional[str] = None) -> str:
    """The build's name, its cache key: torch version, Python version, instruction set, source+flags hash."""
    isa = instruction_set() if isa is None else isa
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(compile_flags(isa)).encode()).hexdigest()[:12]
    torch_version = re.sub(r"\W", "_", torch.__version__)
    return f"margreg_fast_torch{torch_version}_py{sys.version_info[0]}{sys.version_info[1]}_{isa}_{digest}"


def build_directory(name: str) -> Path:
    """``$TORCH_EXTENSIONS_DIR/name``, else the same folder in torch's default extensions cache."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name


def load() -> Path:
    """Compile the kernel if this torch / Python / CPU has no finished build yet, load it, return its path.

    Raises whatever the build raised (no compiler, no ninja, a compile error)."""
    from torch.utils.cpp_extension import load as load_extension

    isa = instruction_set()
    name = build_name(isa)
    folder = build_directory(name)
    library = folder / f"{name}.so"
    if not ((folder / _STAMP).is_file() and library.is_file()):
        print(f"margreg_fast: compiling the native CPU kernel into {folder} (once for this torch, Python and "
              "CPU; about a minute)", file=sys.stderr, flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        load_extension(name=name, sources=[str(SOURCE)], extra_cflags=compile_flags(isa), extra_ldflags=["-fopenmp"],
                       build_directory=str(folder), is_python_module=False, verbose=False)
        (folder / _STAMP).write_text(f"{library.name}\n")
    else:
        torch.ops.load_library(str(library))
    return library


_lock = threading.Lock()
_loaded: Optional[bool] = None  # None: not tried yet in this process
_failure: Optional[str] = None


def _short(error: BaseException) -> str:
    """The last lines of a build error (the compiler's message), on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " / ".join(lines[-3:]) or type(error).__name__
    return text if len(text) <= 600 else "..." + text[-600:]


@torch.compiler.assume_constant_result  # torch.compile runs it while tracing (no graph break), as eager code
def _ensure_loaded() -> bool:
    """Load (building on first use) once per process; on failure warn once and remember why."""
    if _loaded is None:
        _try_load()
    return _loaded


def _try_load() -> None:
    global _loaded, _failure
    with _lock:
        if _loaded is None:
            try:
                load()
                _register_fakes()
                _loaded = True
            except Exception as err:  # any failed build means: fall back to the torch backend
                _loaded = False
                _failure = (f"the native CPU kernel could not be compiled ({type(err).__name__}: {_short(err)}); "
                            f"fix: install a C++ compiler (g++ or clang++) and ninja (`pip install ninja`), then run "
                            f"`{PREBUILD_COMMAND}`")
                warnings.warn(f"margreg_fast: {_failure}. The torch backend is used instead (same results, slower).",
                              NativeBuildWarning, stacklevel=2)


def is_available(device: torch.device) -> bool:
    return device.type == "cpu" and _ensure_loaded()


def unavailable_reason(device: torch.device) -> str:
    if device.type != "cpu":
        return f"the native kernel runs on CPU tensors only, got {device}"
    return _failure or "the native CPU kernel is not loaded"


def reported_unavailable(device: torch.device) -> bool:
    """Whether a :class:`NativeBuildWarning` already told the user why it is unavailable on ``device``."""
    return device.type == "cpu" and _loaded is False


def forward(z0, z1, target, ignore_index) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.ops.margreg_fast.energy_head_forward(z0, z1, target, ignore_index)


def backward(z0, z1, target, ignore_index, stats, grad_d, grad_ce) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.margreg_fast.energy_head_backward(z0, z1, target, ignore_index, stats, grad_d, grad_ce)


def _register_fakes() -> None:
    @torch.library.register_fake("margreg_fast::energy_head_forward")
    def _forward_fake(z0, z1, target, ignore_index):
        acc = accumulation_dtype(z0.dtype)
        batch = z0.shape[0]
        return z0.new_empty((batch,), dtype=acc), z0.new_empty((batch,), dtype=acc), z0.new_empty((batch, 4), dtype=acc)

    @torch.library.register_fake("margreg_fast::energy_head_backward")
    def _backward_fake(z0, z1, target, ignore_index, stats, grad_d, grad_ce):
        return z0.new_empty(z0.shape), z1.new_empty(z1.shape)

