"""margreg_fast: train classifiers to rely less on non-robust features by smoothing the marginal
input density log p(x) = logsumexp(f(x)) - log Z, penalising ||grad_x logsumexp f(x)||^2."""
from .estimators import UnsupportedEstimatorError
from .ops import EnergyDifference, EnergyPenalty, available_backends, energy_difference, energy_penalty
from .penalty import input_gradient_penalty, marginal_density_penalty
from .regularizer import MarginalDensityRegularizer

__version__ = "0.1.0"
__all__ = ["EnergyDifference", "EnergyPenalty", "available_backends", "energy_difference", "energy_penalty",
           "marginal_density_penalty", "input_gradient_penalty", "MarginalDensityRegularizer", "UnsupportedEstimatorError"]
