"""Model-level estimators of input-gradient penalties (the machinery behind :mod:`margreg_fast.penalty`)."""
from .core import PENALTIES, Estimate, estimate
from .defaults import AUTO, DEFAULT_METHOD, DEFAULT_STEP, METHODS
from .errors import UnsupportedEstimatorError
from .passes import HeldStatisticsError, ModelPasses
from .patterns import PatternReplayError
from .steps import resolve_step, unit_direction

__all__ = ["AUTO", "DEFAULT_METHOD", "DEFAULT_STEP", "METHODS", "PENALTIES", "Estimate", "HeldStatisticsError",
           "PatternReplayError", "ModelPasses", "UnsupportedEstimatorError", "estimate", "resolve_step", "unit_direction"]
