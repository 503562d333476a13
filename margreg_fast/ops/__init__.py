"""The fused logsumexp finite-difference head op and its backends."""
from .backends import available_backends
from .energy_head import EnergyPenalty, energy_difference, energy_penalty

__all__ = ["EnergyPenalty", "available_backends", "energy_difference", "energy_penalty"]
