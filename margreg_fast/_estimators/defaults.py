"""The library's defaults, in one place (the regulariser, the penalty functions and the experiment
kit's ``mdr`` training scheme all read them from here); the estimators themselves are in :mod:`.registry`."""
from typing import Union

from .registry import ESTIMATOR_NAMES

#: The step rule of :mod:`.steps` (rounding- and curvature-bounded, per sample).
AUTO = "auto"
#: A user step: a positive real number or :data:`AUTO`.
Step = Union[float, str]
#: The estimator of ``estimator=`` when none is given (a key of :data:`.registry.ESTIMATORS`).
DEFAULT_ESTIMATOR = "rfd"
#: The step ``step=`` when none is given.
DEFAULT_STEP = AUTO

__all__ = ["AUTO", "DEFAULT_ESTIMATOR", "DEFAULT_STEP", "ESTIMATOR_NAMES", "Step"]
