"""Model-level estimators of input-gradient penalties (the machinery behind :mod:`margreg_fast._penalty`)."""
from .core import PENALTY_KINDS, Estimate, estimate
from .defaults import AUTO, DEFAULT_ESTIMATOR, DEFAULT_STEP, ESTIMATOR_NAMES
from .errors import UnsupportedEstimatorError
from .passes import HeldStatisticsError, ModelPasses
from .patterns import PatternReplayError
from .steps import resolve_step, unit_direction

__all__ = ["AUTO", "DEFAULT_ESTIMATOR", "DEFAULT_STEP", "ESTIMATOR_NAMES", "PENALTY_KINDS", "Estimate", "HeldStatisticsError",
           "PatternReplayError", "ModelPasses", "UnsupportedEstimatorError", "estimate", "resolve_step", "unit_direction"]
