"""margreg_fast: train classifiers to rely less on non-robust features by smoothing the marginal
input density log p(x) = logsumexp(f(x)) - log Z, penalising ||grad_x logsumexp f(x)||^2.

The public API is what this module exports (``__all__``); the submodules below it, other than the
experiment kit :mod:`margreg_fast.kit`, are internal and may change without notice.
"""
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what static tools (and the API reference) read; at run time __getattr__ imports each on first use
    from ._estimators import (DEFAULT_ESTIMATOR, DEFAULT_STEP, PENALTY_KINDS, HeldStatisticsError,
                             PatternReplayError, UnsupportedEstimatorError)
    from ._audit import GradientDirectionWarning
    from ._estimators.passes import InferenceModeError
    from ._estimators.registry import ESTIMATORS, Estimator
    from ._monitor import SecantWarning
    from ._ops import EnergyDifference, EnergyPenalty, available_backends, energy_difference, energy_penalty
    from ._ops.native import NativeBuildWarning
    from ._penalty import input_gradient_penalty, marginal_density_penalty
    from ._regularizer import MarginalDensityRegularizer
    from ._sweep import sweep_weights

#: The module of each exported name. ``import margreg_fast`` imports nothing else (not even torch), so that the
#: ``margreg-fast`` command starts at once; the first use of a name imports its module (tests/test_packaging.py
#: checks this table against the imports above and __all__).
_EXPORTED_FROM = {
    "._estimators": ("DEFAULT_ESTIMATOR", "DEFAULT_STEP", "PENALTY_KINDS", "HeldStatisticsError",
                    "PatternReplayError", "UnsupportedEstimatorError"),
    "._audit": ("GradientDirectionWarning",),
    "._estimators.passes": ("InferenceModeError",),
    "._estimators.registry": ("ESTIMATORS", "Estimator"),
    "._monitor": ("SecantWarning",),
    "._ops": ("EnergyDifference", "EnergyPenalty", "available_backends", "energy_difference", "energy_penalty"),
    "._ops.native": ("NativeBuildWarning",),
    "._penalty": ("input_gradient_penalty", "marginal_density_penalty"),
    "._regularizer": ("MarginalDensityRegularizer",),
    "._sweep": ("sweep_weights",),
}
_MODULE_OF = {name: module for module, names in _EXPORTED_FROM.items() for name in names}
#: The names of 0.2 that 0.3.0 renamed: old -> (the exported name it reads, a function of that name's value);
#: each use warns (FutureWarning) until 0.4.0.
_RENAMED = {"DEFAULT_METHOD": ("DEFAULT_ESTIMATOR", None), "METHODS": ("ESTIMATORS", tuple)}

__version__ = "0.3.0"
__all__ = [
    # the training objective and the penalties
    "MarginalDensityRegularizer", "marginal_density_penalty", "input_gradient_penalty",
    # choosing the weight on your own model and data
    "sweep_weights",
    # the fused head op and its result types
    "energy_difference", "energy_penalty", "available_backends", "EnergyDifference", "EnergyPenalty",
    # the estimators, their default and the penalty kinds
    "ESTIMATORS", "Estimator", "DEFAULT_ESTIMATOR", "DEFAULT_STEP", "PENALTY_KINDS",
    # every exception and warning the library raises of its own type
    "UnsupportedEstimatorError", "HeldStatisticsError", "PatternReplayError", "InferenceModeError", "SecantWarning",
    "NativeBuildWarning", "GradientDirectionWarning",
]


def __getattr__(name: str):
    """An exported name (imported from its module on first use), or a submodule (``margreg_fast._ops``)."""
    if name in _MODULE_OF:
        value = getattr(import_module(_MODULE_OF[name], __name__), name)
        globals()[name] = value
        return value
    if name in _RENAMED:
        new, convert = _RENAMED[name]
        from ._renames import warn_renamed

        warn_renamed(f"margreg_fast.{name}", f"margreg_fast.{new}" if convert is None else
                     f"{convert.__name__}(margreg_fast.{new})")
        value = __getattr__(new)
        return value if convert is None else convert(value)
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
