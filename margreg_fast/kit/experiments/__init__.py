"""The experiment tool: config, resumable training, evaluation, reports and figures."""
from .config import METHODS, PENALTY_OF_METHOD, ExperimentConfig

__all__ = ["METHODS", "PENALTY_OF_METHOD", "ExperimentConfig"]
