"""The wheel declares its dependencies: built from the sources and installed into a fresh virtual
environment that holds only the pinned torch, it pulls numpy; the CLI names the ``experiments`` extra
until that is installed, then runs a tiny experiment.

Slow (the wheel compiles the native kernel, about a minute, and pip fetches the extra's packages).
torch is not reinstalled: the fresh environment sees this environment's torch, and only the
distributions torch requires, through a .pth file (see :func:`_link_torch`).
"""
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "pyproject.toml", "MANIFEST.in", "requirements.txt", "README.md", "csrc", "margreg_fast")
TINY = ["--epochs", "1", "--max-train", "64", "--max-test", "32", "--eval-samples", "4", "--width", "8",
        "--threads", "1", "--methods", "none", "mdr", "--quiet"]


def _run(cmd, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _build_wheel(tmp: Path) -> Path:
    """Copy the sources (no built objects) and build a wheel against this environment's torch."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    done = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
                 src], cwd=tmp)
    assert done.returncode == 0, done.stderr[-4000:]
    (wheel,) = (tmp / "dist").glob("margreg_fast-*.whl")
    return wheel


def _requirements(name: str):
    """Names of the distributions ``name`` requires here (markers evaluated, extras ignored)."""
    for text in md.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            yield req.name


def _link_torch(site: Path) -> None:
    """Make torch and what it requires, nothing else, importable (and known to pip) in ``site``."""
    shelf = site.parent / "torch-shelf"
    shelf.mkdir()
    todo, seen = ["torch"], set()
    while todo:
        name = todo.pop()
        dist = md.distribution(name)
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files if ".." not in Path(f).parts}:
            if not (shelf / top).exists():
                (shelf / top).symlink_to(base / top)
        todo.extend(_requirements(name))
    (site / "torch-shelf.pth").write_text(str(shelf) + "\n")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_wheel_installs_its_dependencies_and_runs_the_cli(tmp_path):
    wheel = _build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, cli = env_dir / "bin" / "python", env_dir / "bin" / "margreg-fast"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip())
    _link_torch(site)

    done = _run([python, "-m", "pip", "install", "-q", wheel], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    done = _run([python, "-W", "error::UserWarning", "-c", "import numpy, torch, margreg_fast; "
                 "print(margreg_fast.available_backends('cpu'), torch.from_numpy(numpy.ones(2)).sum().item())"], tmp_path)
    assert done.returncode == 0 and "native" in done.stdout, done.stderr[-4000:]

    out = tmp_path / "runs"
    done = _run([cli, "experiment", "spurious", "--out", out / "a", *TINY], tmp_path)
    assert done.returncode == 1 and "pip install 'margreg_fast[experiments]'" in done.stderr, done.stderr[-4000:]

    done = _run([python, "-m", "pip", "install", "-q", f"{wheel}[experiments]"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    done = _run([cli, "experiment", "spurious", "--out", out / "b", *TINY], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| mdr |" in done.stdout and (out / "b" / "results.json").is_file()
