"""The package as it ships: one pure-Python wheel and an sdist that pass `twine check`, dependencies with
lower bounds only, the C++ source and the configs inside; `import margreg_fast` and `margreg-fast --help`
load no torch; `claims --demo` is make demo's plan, with the weights shipped in the package.

The wheel installed into fresh environments (torch 2.13.0 and 2.14.1), the first-use compile timed, a
second process on torch's lock, the compiler hidden: CI's second stage, scripts/ci_second_env.sh.
"""
import ast
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import margreg_fast
from margreg_fast.kit.cli import PACKAGED_WEIGHTS, build_parser, load_weights_file

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "pyproject.toml", "MANIFEST.in", "requirements.txt", "README.md", "margreg_fast")
SHIPPED = ("margreg_fast/csrc/energy_head.cpp", "margreg_fast/kit/configs/blockmnist_weights.json")
COMPILED = (".so", ".pyd", ".dll", ".dylib", ".o")


def _run(*cmd, cwd, timeout=600):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``python -m build`` of a copy of the sources (no build outputs), without isolation: no index needed."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    done = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", src, cwd=tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "dist"


def test_one_pure_python_wheel_and_an_sdist_that_twine_accepts(dist):
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    assert wheel.name == f"margreg_fast-{margreg_fast.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(COMPILED)]
    assert set(SHIPPED) <= set(names)
    top = f"margreg_fast-{margreg_fast.__version__}/"
    members = {m[len(top):] for m in tarfile.open(sdist).getnames()}
    assert set(SHIPPED) | {"setup.py", "pyproject.toml", "README.md"} <= members
    assert not [m for m in members if m.endswith(COMPILED)]
    done = _run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist, cwd=dist)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dependencies_have_lower_bounds_only(dist):
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = Parser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert core == ["torch>=2.13", "numpy>=1.24"]  # 2.13.0: the oldest torch the suite has passed on
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+>=[0-9.]+(; extra == \"\w+\")?", r) for r in requires), requires
    extras = {r.split("; extra == ")[1].strip('"') for r in requires if "extra ==" in r}
    assert extras == {"experiments", "triton"}


def test_import_and_help_load_no_torch_and_no_experiment_module():
    code = ("import sys\nimport margreg_fast\nfrom margreg_fast.__main__ import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'matplotlib', 'scipy', "
            "'captum', 'sklearn') or m.startswith('margreg_fast.kit.') and m not in "
            "('margreg_fast.kit.cli', 'margreg_fast.kit.extras')))")
    done = _run(sys.executable, "-c", code, cwd=ROOT)
    assert done.returncode == 0 and "claims" in done.stdout, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_lazy_exports_are_the_public_names_and_the_static_imports():
    assert sorted(margreg_fast._MODULE_OF) == sorted(margreg_fast.__all__)
    tree = ast.parse((ROOT / "margreg_fast" / "__init__.py").read_text())
    (guard,) = [node for node in tree.body if isinstance(node, ast.If)]  # if TYPE_CHECKING:
    static = {f".{'.' * (node.level - 1)}{node.module}": tuple(a.name for a in node.names) for node in guard.body}
    assert static == margreg_fast._EXPORTED_FROM


def _demo_recipe():
    """The arguments of make demo's command, as the Makefile gives them (its variables expanded)."""
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= (.*)$", makefile, re.M))
    recipe = re.search(r"^demo:.*\n\t(.*)$", makefile, re.M).group(1)
    recipe = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), recipe)
    return shlex.split(recipe.split(" -m margreg_fast ", 1)[1])


def test_claims_demo_is_make_demo_with_the_packaged_weights():
    make_demo = vars(build_parser().parse_args(_demo_recipe()))
    demo = vars(build_parser().parse_args(["claims", "--demo", "--out", "runs/demo"]))
    assert PACKAGED_WEIGHTS.is_file() and PACKAGED_WEIGHTS.is_relative_to(Path(margreg_fast.__file__).parent)
    assert demo["weights_file"] == PACKAGED_WEIGHTS and (ROOT / make_demo["weights_file"]).resolve() == PACKAGED_WEIGHTS
    assert {k: v for k, v in demo.items() if k != "weights_file"} == \
        {k: v for k, v in make_demo.items() if k != "weights_file"}
    assert load_weights_file(PACKAGED_WEIGHTS)["mdr"] > 0
    later = vars(build_parser().parse_args(["claims", "--demo", "--seeds", "4", "--out", "o"]))
    assert later["seeds"] == [4] and later["eval_samples"] == 100  # options after --demo override it
