"""The step rule's curvature bound C (margreg_fast/_estimators/steps.py), set to another value for a block.

For benchmarks/estimator_step_rule.py's sweep over C, which measures what the library's own rule does
at each C; a benchmark may not import the library's internals, so the switch lives here, next to the
zoo it runs on.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator
from unittest import mock

from margreg_fast._estimators import steps


@contextmanager
def curvature_bound(c: float) -> Iterator[None]:
    """Inside: the automatic step is min(r, c / ||g||) (resolve_step reads the constant at each call)."""
    with mock.patch.object(steps, "CURVATURE_BOUND", c):
        yield
