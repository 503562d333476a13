"""margreg_fast: train classifiers to rely less on non-robust features by smoothing the marginal
input density log p(x) = logsumexp(f(x)) - log Z, penalising ||grad_x logsumexp f(x)||^2.

The public API is what this module exports (``__all__``); the submodules below it, other than the
experiment kit :mod:`margreg_fast.kit`, are internal and may change without notice.
"""
from .estimators import DEFAULT_METHOD, DEFAULT_STEP, METHODS, HeldStatisticsError, UnsupportedEstimatorError
from .estimators.passes import InferenceModeError
from .monitor import SecantWarning
from .ops import EnergyDifference, EnergyPenalty, available_backends, energy_difference, energy_penalty
from .ops.native import NativeBuildWarning
from .penalty import input_gradient_penalty, marginal_density_penalty
from .regularizer import MarginalDensityRegularizer
from .sweep import sweep_weights

__version__ = "0.2.0"
__all__ = [
    # the training objective and the penalties
    "MarginalDensityRegularizer", "marginal_density_penalty", "input_gradient_penalty",
    # choosing the weight on your own model and data
    "sweep_weights",
    # the fused head op and its result types
    "energy_difference", "energy_penalty", "available_backends", "EnergyDifference", "EnergyPenalty",
    # the estimators' names and defaults
    "METHODS", "DEFAULT_METHOD", "DEFAULT_STEP",
    # every exception and warning the library raises of its own type
    "UnsupportedEstimatorError", "HeldStatisticsError", "InferenceModeError", "SecantWarning", "NativeBuildWarning",
]
