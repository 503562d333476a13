"""Build margreg_fast and its native CPU kernel (csrc/) with torch.utils.cpp_extension and ninja.

Install with ``pip install --no-build-isolation -e .`` so the build sees the installed torch.
Dependencies: the core needs torch (the version the kernel was built against: the compiled
extension is tied to its ABI) and numpy. Extras: ``[experiments]`` for the experiment kit and its
CLI (versions pinned as in requirements.txt) and ``[triton]`` for the GPU head-op backend.
"""
import platform
import re
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

EXPERIMENTS = ("captum", "scikit-learn", "scipy", "mlxtend", "matplotlib", "tqdm")
TRITON = "triton>=3.6"  # the kernels are tested with triton 3.6 and 3.9


def _pinned(names):
    """``name==version`` for each name, as pinned in requirements.txt."""
    pins = {}
    for line in (Path(__file__).parent / "requirements.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(0)
    return [pins[name] for name in names]


def _vector_flags():
    """AVX2+FMA+F16C code (Sleef exp via at::vec) when the build machine has them, else portable code.

    The choice is made at build time from /proc/cpuinfo: the built extension targets the machine
    that builds it (set MARGREG_FAST_NO_AVX2=1 to force the portable build).
    """
    import os

    if os.environ.get("MARGREG_FAST_NO_AVX2") == "1" or platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return []
    if {"avx2", "fma", "f16c"} <= flags:
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


setup(
    name="margreg_fast",
    version="0.1.0",
    description="Fast marginal-density (score-norm) regularisation for PyTorch classifiers",
    packages=find_packages(include=["margreg_fast", "margreg_fast.*"]),
    python_requires=">=3.10",
    install_requires=[f"torch=={torch.__version__.split('+')[0]}", "numpy>=1.24"],
    extras_require={"experiments": _pinned(EXPERIMENTS), "triton": [TRITON]},
    ext_modules=[
        CppExtension(
            name="margreg_fast._C",
            sources=["csrc/energy_head.cpp"],
            extra_compile_args=["-O3", "-fopenmp"] + _vector_flags(),
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["margreg-fast=margreg_fast.__main__:main"]},
)
