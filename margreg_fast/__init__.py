"""margreg_fast: train classifiers to rely less on non-robust features by smoothing the marginal
input density log p(x) = logsumexp(f(x)) - log Z, penalising ||grad_x logsumexp f(x)||^2.

The public API is what this module exports (``__all__``); the submodules below it, other than the
experiment kit :mod:`margreg_fast.kit`, are internal and may change without notice.
"""
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what static tools (and the API reference) read; at run time __getattr__ imports each on first use
    from .estimators import (DEFAULT_METHOD, DEFAULT_STEP, METHODS, HeldStatisticsError, PatternReplayError,
                             UnsupportedEstimatorError)
    from .audit import GradientDirectionWarning
    from .estimators.passes import InferenceModeError
    from .estimators.registry import ESTIMATORS, Estimator
    from .monitor import SecantWarning
    from .ops import EnergyDifference, EnergyPenalty, available_backends, energy_difference, energy_penalty
    from .ops.native import NativeBuildWarning
    from .penalty import input_gradient_penalty, marginal_density_penalty
    from .regularizer import MarginalDensityRegularizer
    from .sweep import sweep_weights

#: The module of each exported name. ``import margreg_fast`` imports nothing else (not even torch), so that the
#: ``margreg-fast`` command starts at once; the first use of a name imports its module (tests/test_packaging.py
#: checks this table against the imports above and __all__).
_EXPORTED_FROM = {
    ".estimators": ("DEFAULT_METHOD", "DEFAULT_STEP", "METHODS", "HeldStatisticsError", "PatternReplayError",
                     "UnsupportedEstimatorError"),
    ".audit": ("GradientDirectionWarning",),
    ".estimators.passes": ("InferenceModeError",),
    ".estimators.registry": ("ESTIMATORS", "Estimator"),
    ".monitor": ("SecantWarning",),
    ".ops": ("EnergyDifference", "EnergyPenalty", "available_backends", "energy_difference", "energy_penalty"),
    ".ops.native": ("NativeBuildWarning",),
    ".penalty": ("input_gradient_penalty", "marginal_density_penalty"),
    ".regularizer": ("MarginalDensityRegularizer",),
    ".sweep": ("sweep_weights",),
}
_MODULE_OF = {name: module for module, names in _EXPORTED_FROM.items() for name in names}

__version__ = "0.2.0"
__all__ = [
    # the training objective and the penalties
    "MarginalDensityRegularizer", "marginal_density_penalty", "input_gradient_penalty",
    # choosing the weight on your own model and data
    "sweep_weights",
    # the fused head op and its result types
    "energy_difference", "energy_penalty", "available_backends", "EnergyDifference", "EnergyPenalty",
    # the estimators' names and defaults
    "METHODS", "DEFAULT_METHOD", "DEFAULT_STEP", "ESTIMATORS", "Estimator",
    # every exception and warning the library raises of its own type
    "UnsupportedEstimatorError", "HeldStatisticsError", "PatternReplayError", "InferenceModeError", "SecantWarning",
    "NativeBuildWarning", "GradientDirectionWarning",
]


def __getattr__(name: str):
    """An exported name (imported from its module on first use), or a submodule (``margreg_fast.ops``)."""
    if name in _MODULE_OF:
        value = getattr(import_module(_MODULE_OF[name], __name__), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(__all__))
