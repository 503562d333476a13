"""The library's defaults, in one place (the regulariser, the penalty functions and the experiment
kit's ``mdr`` method all read them from here); the estimators themselves are in :mod:`.registry`."""
from typing import Union

from .registry import METHODS

#: The step rule of :mod:`.steps` (rounding- and curvature-bounded, per sample).
AUTO = "auto"
#: A user step: a positive real number or :data:`AUTO`.
Step = Union[float, str]
DEFAULT_METHOD = "rfd"
DEFAULT_STEP = AUTO

__all__ = ["AUTO", "DEFAULT_METHOD", "DEFAULT_STEP", "METHODS", "Step"]
