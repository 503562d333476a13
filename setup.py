"""Build margreg_fast and its native CPU kernel (csrc/) with torch.utils.cpp_extension and ninja.

Install with ``pip install --no-build-isolation -e .`` so the build sees the installed torch.
"""
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

setup(
    name="margreg_fast",
    version="0.1.0",
    description="Fast marginal-density (score-norm) regularisation for PyTorch classifiers",
    packages=find_packages(include=["margreg_fast", "margreg_fast.*"]),
    python_requires=">=3.10",
    ext_modules=[
        CppExtension(
            name="margreg_fast._C",
            sources=["csrc/energy_head.cpp"],
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["margreg-fast=margreg_fast.__main__:main"]},
)
