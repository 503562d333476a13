"""The experiment tool: config, resumable training, evaluation, reports and figures."""
from .config import SCHEMES, PENALTY_KIND_OF_SCHEME, ExperimentConfig

__all__ = ["SCHEMES", "PENALTY_KIND_OF_SCHEME", "ExperimentConfig"]
