"""The names that 0.3.0 changed, kept working until 0.4.0 with a ``FutureWarning`` that names the new one.

0.3.0 gave each concept one word: the **estimator** of the penalty (``"rfd"``, ``"exact"``, ...; it
was ``method=``) and the **penalty kind** (``"marginal"``, ``"conditional"``, ``"joint"``; it was
``penalty=``). :func:`renamed_keywords` maps a callable's old keywords to the new ones, and
:func:`renamed_attribute` an old attribute or module-level name to its new home. Giving a keyword
under both names raises TypeError (which value was meant is unknowable).
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Dict

#: The release that drops the old names.
REMOVED_IN = "0.4.0"
#: Old keyword -> new keyword, for every public callable that took the old one.
ESTIMATOR_KEYWORDS: Dict[str, str] = {"method": "estimator", "penalty": "penalty_kind"}


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """The FutureWarning for a use of the old name ``old`` of ``new``."""
    warnings.warn(f"{old} is renamed {new} in margreg_fast 0.3.0; the old name stops working in {REMOVED_IN}",
                  FutureWarning, stacklevel=stacklevel)


def renamed_keywords(renames: Dict[str, str]) -> Callable[[Callable], Callable]:
    """Decorator: ``fn(..., old=v)`` calls ``fn(..., new=v)`` with a FutureWarning, for each old -> new in
    ``renames``; ``fn(..., old=v, new=w)`` raises TypeError. The signature shown (``inspect.signature``,
    the API reference) is ``fn``'s own, with the new names only."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__qualname__}() got {old}= and {new}=; {old}= is the old name of "
                                        f"{new}=: pass {new}= only")
                    warn_renamed(f"{fn.__qualname__}({old}=...)", f"{new}=")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def renamed_attribute(old: str, new: str) -> property:
    """A read-only property named ``old`` that warns and returns ``self.<new>``."""
    def get(self):
        warn_renamed(f"{type(self).__name__}.{old}", f"{type(self).__name__}.{new}")
        return getattr(self, new)

    return property(get, doc=f"Deprecated (until {REMOVED_IN}): the old name of :attr:`{new}`.")
