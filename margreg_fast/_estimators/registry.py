r"""One entry per estimator of R(x) = ||grad_x S||^2: everything the library knows about it, in one place.

The estimators' computations live in :mod:`.core`; what the rest of the library needs to know about
each one -- its name, whether it takes a step and the order of its truncation error, its secant
(which probes it makes, and whether their step takes a random sign), whether it needs a double
backward or forward-mode AD, whether its value and gradient are exact, and what the secant monitor
advises when its slope leaves the band -- is read from :data:`ESTIMATORS`: the checks
(``estimator=`` must be a key), the core (which passes each one makes and how it forms its value:
:func:`.core.estimate` branches on these fields, never on a name, so that a new estimator made of
these parts is one entry here), the monitor's advice
(:mod:`margreg_fast._monitor`), the audit (:mod:`margreg_fast._audit`) and the experiment kit (which
estimators take a step: :data:`STEPLESS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

#: The secants (None: the estimator takes no finite difference):
#: ``"forward"``: sigma = (S(x + h v) - S(x)) / h, one probe; its head-op pass on (z(x), z(x + h v)) also
#: gives the CE of z(x);
#: ``"central"``: sigma = (S(x + h v) - S(x - h v)) / 2h, two probes.
SECANTS = ("forward", "central")


@dataclass(frozen=True)
class Estimator:
    """What one estimator is (see :mod:`.core` for its computation and cost)."""

    #: the ``estimator=`` name
    name: str
    #: order p of the truncation error of its value (fd) or expected gradient (central, rfd): bias O(h^p);
    #: None: it takes no step (:mod:`.steps`)
    order: Optional[int]
    #: differentiates the input gradient again (double backprop): refused on ops without a double
    #: backward and on compiled or FSDP2-sharded models (:mod:`.errors`)
    double_backward: bool
    #: forward-mode AD (``torch.func.jvp``): refused on ops without a forward-AD formula
    forward_mode: bool
    #: its value is the exact R = ||g||^2 (its gradient may still be a finite difference's)
    exact_value: bool
    #: its parameter gradient is the exact gradient of R (no finite difference in it)
    exact_gradient: bool
    #: its finite difference along v, one of :data:`SECANTS`; None: it takes none (then ``order`` is None too)
    secant: Optional[str] = None
    #: the step of its secant takes a random sign s = +-1 per sample (rfd)
    random_sign: bool = False
    #: the monitor's advice when the secant ratio falls below its band ("" where none is specific)
    low_ratio_advice: str = ""

    def __post_init__(self) -> None:
        if self.secant not in (None, *SECANTS):
            raise ValueError(f"estimator {self.name!r}: secant must be one of {SECANTS} or None, got {self.secant!r}")
        if (self.secant is None) != (self.order is None) or (self.random_sign and self.secant is None):
            raise ValueError(f"estimator {self.name!r}: a secant goes with an order (and a random sign needs a secant)")

    @property
    def takes_step(self) -> bool:
        """Does ``step=`` change what it computes?"""
        return self.order is not None


ESTIMATORS: Dict[str, Estimator] = {e.name: e for e in (
    Estimator("exact", order=None, double_backward=True, forward_mode=False, exact_value=True, exact_gradient=True),
    Estimator("jvp", order=None, double_backward=False, forward_mode=True, exact_value=True, exact_gradient=True),
    Estimator("fd", order=1, double_backward=False, forward_mode=False, exact_value=False, exact_gradient=False,
              secant="forward", low_ratio_advice="Training games the one-sided secant (estimator='fd'): use the default estimator='rfd', "
                               "or estimator='central' or 'exact'."),
    Estimator("central", order=2, double_backward=False, forward_mode=False, exact_value=False, exact_gradient=False,
              secant="central"),
    Estimator("rfd", order=2, double_backward=False, forward_mode=False, exact_value=True, exact_gradient=False,
              secant="forward", random_sign=True),
)}

#: The estimators' names, in the registry's order.
ESTIMATOR_NAMES: Tuple[str, ...] = tuple(ESTIMATORS)
#: Estimators that take no finite-difference step.
STEPLESS: Tuple[str, ...] = tuple(name for name, e in ESTIMATORS.items() if not e.takes_step)
