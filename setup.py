"""Metadata of margreg_fast: a pure-Python package (one ``py3-none-any`` wheel, no compiled file).

The native CPU kernel ships as C++ source (margreg_fast/csrc/) and is compiled on first use, with
ninja through torch.utils.cpp_extension.load, against the torch that is installed (see
margreg_fast/_ops/native). So the core needs only ``torch >= 2.13`` (the oldest torch the suite has
passed on: 2.13.0; 2.14.1 passes the core tests in CI's second stage, scripts/ci_second_env.sh) and
numpy, and installing it never replaces the user's torch. The extras take lower bounds, the
major.minor releases they were tested with; requirements.txt pins the exact versions that reproduce
the committed results: ``[experiments]`` for the experiment kit and its CLI, ``[triton]`` for the GPU
head-op backend.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "margreg_fast" / "__init__.py").read_text(), re.M).group(1)
EXPERIMENTS = ["captum>=0.9", "scikit-learn>=1.9", "scipy>=1.17", "mlxtend>=0.25", "matplotlib>=3.11", "tqdm>=4.70"]
TRITON = ["triton>=3.6"]  # the kernels are tested with triton 3.6 and 3.9

setup(
    name="margreg_fast",
    version=VERSION,
    description="Fast marginal-density (score-norm) regularisation for PyTorch classifiers",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["margreg_fast", "margreg_fast.*"]),
    package_data={"margreg_fast": ["csrc/*.cpp"], "margreg_fast.kit": ["configs/*.json"]},
    include_package_data=False,
    zip_safe=False,
    python_requires=">=3.10",
    install_requires=["torch>=2.13", "numpy>=1.24"],
    extras_require={"experiments": EXPERIMENTS, "triton": TRITON},
    entry_points={"console_scripts": ["margreg-fast=margreg_fast.__main__:main"]},
)
