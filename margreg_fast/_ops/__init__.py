"""The fused logsumexp finite-difference head op and its backends."""
from .backends import available_backends
from .energy_head import EnergyDifference, EnergyPenalty, energy_difference, energy_penalty
from .native import NativeBuildWarning
from .validation import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "EnergyDifference", "EnergyPenalty", "NativeBuildWarning", "available_backends",
           "energy_difference", "energy_penalty"]
