"""The library's default estimator and step, in one place (the regulariser, the penalty functions
and the experiment kit's ``mdr`` method all read them from here)."""
DEFAULT_METHOD = "rfd"
DEFAULT_STEP = "auto"
