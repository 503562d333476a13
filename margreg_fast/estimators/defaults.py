"""The estimators' names and the library's defaults, in one place (the regulariser, the penalty
functions and the experiment kit's ``mdr`` method all read them from here)."""
from typing import Union

#: The estimators of R (see :mod:`.core`).
METHODS = ("exact", "jvp", "fd", "central", "rfd")
#: The step rule h_i = c eps^(1/(p+1)) RMS(x_i) (see :mod:`.steps`).
AUTO = "auto"
#: A user step: a positive real number or :data:`AUTO`.
Step = Union[float, str]
DEFAULT_METHOD = "rfd"
DEFAULT_STEP = AUTO
