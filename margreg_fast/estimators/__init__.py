"""Model-level estimators of input-gradient penalties (the machinery behind :mod:`margreg_fast.penalty`)."""
from .defaults import DEFAULT_METHOD, DEFAULT_STEP
from .core import METHODS, QUANTITIES, Estimate, estimate
from .errors import UnsupportedEstimatorError
from .probe import frozen_running_stats, probe_forward
from .steps import AUTO, resolve_step, unit_direction

__all__ = ["AUTO", "DEFAULT_METHOD", "DEFAULT_STEP", "METHODS", "QUANTITIES", "Estimate", "UnsupportedEstimatorError", "estimate",
           "frozen_running_stats", "probe_forward", "resolve_step", "unit_direction"]
