"""Name the pip extra to install when the experiment kit misses an optional dependency.

The core (head op, estimators, regulariser) needs only torch and numpy; the kit also needs the
packages of the ``[experiments]`` extra (setup.py).
"""
from __future__ import annotations

from typing import Optional

#: Top-level module -> the extra that installs it.
EXTRA_OF = {name: "experiments" for name in ("captum", "sklearn", "scipy", "mlxtend", "matplotlib", "tqdm")}


def install_hint(err: ModuleNotFoundError) -> Optional[str]:
    """A message naming the extra that provides the missing module, or None if no extra does."""
    module = (err.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return (f"margreg-fast: this command needs {module!r}, which is not installed; "
            f"install the {extra!r} extra: pip install 'margreg_fast[{extra}]'")
