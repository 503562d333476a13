"""The public API is what ``margreg_fast`` exports, and the kit, the benchmarks and the examples use only it.

A name is public when it is in ``margreg_fast.__all__`` (or is ``__version__``); the experiment kit
``margreg_fast.kit`` is a public package of its own. Every other module below ``margreg_fast`` is
internal. Like tests/test_core_stands_alone.py for the core, this reads the import statements of
every consumer file: an import of an internal module or name fails with the file and line.
"""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import margreg_fast

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "margreg_fast" / "kit"
PUBLIC = set(margreg_fast.__all__) | {"__version__"}


def _consumer_files():
    kit = sorted(KIT.rglob("*.py"))
    others = sorted(p for d in ("benchmarks", "examples", "scripts") for p in (ROOT / d).rglob("*.py"))
    return kit + others


def _module_of(path: Path) -> str:
    """The dotted module name of a file of the package (for resolving relative imports)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(path: Path, tree: ast.AST):
    """(line, what) for every use of the library outside its public API in the parsed file."""
    in_kit = KIT in path.parents
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == "margreg_fast":
                    aliases.add(alias.asname or name)
                elif name.startswith("margreg_fast.") and not name.startswith("margreg_fast.kit"):
                    found.append((node.lineno, f"import {name}"))
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            if module == "margreg_fast":
                found += [(node.lineno, f"from margreg_fast import {a.name}") for a in node.names if a.name not in PUBLIC]
            elif module == "margreg_fast.kit" or module.startswith("margreg_fast.kit."):
                if not in_kit:  # the kit's own modules may share their private helpers; nobody else may
                    found += [(node.lineno, f"from {module} import {a.name}") for a in node.names
                              if a.name.startswith("_")]
            elif module.startswith("margreg_fast."):
                found.append((node.lineno, f"from {module} import ..."))
    for node in ast.walk(tree):  # margreg_fast.<name> through `import margreg_fast [as mf]`
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr not in PUBLIC and node.attr != "kit":
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


@pytest.mark.parametrize("path", _consumer_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_consumers_use_only_the_public_api(path):
    found = private_imports(path, ast.parse(path.read_text(), str(path)))
    assert not found, (f"{path.relative_to(ROOT)} uses internal parts of margreg_fast: "
                       + "; ".join(f"line {line}: {what}" for line, what in found)
                       + ". Import public names from margreg_fast (export a name there if users need it too).")


def test_the_check_fails_on_private_imports():
    """The checker itself: each kind of internal import is caught, the public ones are not."""
    src = ("import margreg_fast as mf\nimport margreg_fast._ops\nfrom margreg_fast._estimators import estimate\n"
           "from margreg_fast import marginal_density_penalty, PENALTIES\nfrom ..._monitor import SecantWarning\n"
           "from ... import MarginalDensityRegularizer\nmf.energy_difference\nmf.reduction\n")
    path = KIT / "experiments" / "example.py"
    found = [what for _, what in private_imports(path, ast.parse(src))]
    assert found == ["import margreg_fast._ops", "from margreg_fast._estimators import ...",
                     "from margreg_fast import PENALTIES", "from margreg_fast._monitor import ...", "mf.reduction"], found
    outside = ROOT / "benchmarks" / "example.py"
    found = [what for _, what in private_imports(outside, ast.parse("from margreg_fast.kit.cli import _step\n"))]
    assert found == ["from margreg_fast.kit.cli import _step"]


def test_every_public_name_resolves_and_none_is_underscored():
    for name in margreg_fast.__all__:
        assert not name.startswith("_") and hasattr(margreg_fast, name), name
    assert len(set(margreg_fast.__all__)) == len(margreg_fast.__all__)


def _core_modules():
    for info in pkgutil.walk_packages(margreg_fast.__path__, "margreg_fast."):
        if not (info.name.startswith("margreg_fast.kit") or info.name == "margreg_fast.__main__"):
            yield importlib.import_module(info.name)


def test_every_exception_and_warning_of_the_core_is_exported():
    """A user who meets one of the library's own exception or warning types can import it from margreg_fast."""
    own = {obj for module in _core_modules() for _, obj in inspect.getmembers(module, inspect.isclass)
           if issubclass(obj, BaseException) and obj.__module__.startswith("margreg_fast")}
    assert own, "no exception type found: the walk over the core modules is broken"
    missing = sorted(cls.__qualname__ for cls in own if getattr(margreg_fast, cls.__name__, None) is not cls)
    assert not missing, f"exception or warning types not exported by margreg_fast: {missing}"


def test_the_only_public_modules_are_the_package_and_the_kit():
    """Every module under margreg_fast but the kit has an underscored name (or lives in an underscored package)."""
    names = [info.name for info in pkgutil.walk_packages(margreg_fast.__path__, "margreg_fast.")]
    assert "margreg_fast._estimators.core" in names and "margreg_fast._ops.native" in names
    public = [n for n in names if not n.startswith("margreg_fast.kit")
              and not any(part.startswith("_") for part in n.split(".")[1:])]
    assert public == [], public
