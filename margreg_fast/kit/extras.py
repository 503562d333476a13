"""Name the packages to install when the experiment kit misses an optional dependency.

The core (head op, estimators, regulariser) needs only torch and numpy; the kit also needs the
packages of the ``[experiments]`` extra (setup.py). The package is on no index, so the hint names
what pip can install as typed: the extra's requirements as the installed package declares them,
and, for a clone of the repository, the editable install with the extra.
"""
from __future__ import annotations

import importlib.metadata
from typing import List, Optional

#: Top-level module -> the extra that installs it.
EXTRA_OF = {name: "experiments" for name in ("captum", "sklearn", "scipy", "mlxtend", "matplotlib", "tqdm")}


def extra_requirements(extra: str) -> List[str]:
    """The requirements (``name>=version``) of ``extra`` in the installed margreg_fast's metadata ([] if none)."""
    try:
        declared = importlib.metadata.requires("margreg_fast") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    marker = f'extra == "{extra}"'
    return [text.split(";")[0].strip() for text in declared if marker in text]


def install_hint(err: ModuleNotFoundError) -> Optional[str]:
    """A message naming the extra that provides the missing module and a pip command that installs it,
    or None if no extra does."""
    module = (err.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    packages = " ".join(f"'{req}'" for req in extra_requirements(extra))
    where = f"pip install {packages}, or in a clone of the repository: " if packages else "in a clone of the repository: "
    return (f"margreg-fast: this command needs {module!r}, which is not installed; install the {extra!r} extra's "
            f"packages: {where}pip install -e '.[{extra}]'")
