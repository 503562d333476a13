"""Model-level estimators of input-gradient penalties (the machinery behind :mod:`margreg_fast.penalty`)."""
from .core import METHODS, PENALTIES, Estimate, estimate
from .defaults import DEFAULT_METHOD, DEFAULT_STEP
from .errors import UnsupportedEstimatorError
from .passes import HeldStatisticsError, ModelPasses
from .steps import AUTO, resolve_step, unit_direction

__all__ = ["AUTO", "DEFAULT_METHOD", "DEFAULT_STEP", "METHODS", "PENALTIES", "Estimate", "HeldStatisticsError", "ModelPasses",
           "UnsupportedEstimatorError", "estimate", "resolve_step", "unit_direction"]
