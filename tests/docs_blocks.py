"""The code blocks of the README and the documentation pages, and how the suite checks each kind.

Every fenced block names its language, and the language says how it is checked:

* ``python``: run as it stands, in a fresh interpreter from the repository root (exit status 0).
* ``console`` / ``bash``: commands a user types; many train for minutes or hours, or install, so the
  suite checks that each one would run as written without running it: ``make T`` by ``make -n T``
  (the target exists and expands), the ``margreg-fast`` command line by its own argument parser and
  configuration checks, ``pip install PATH[extra]`` by the path and the extra in setup.py, a script by
  its file, ``python -m margreg_fast build-native`` and ``... --help`` by running them (seconds).
* ``text``: output, formulas or pseudo-code: not run.

Any other language fails: mark the block with one of these.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.S | re.M)
RUN, COMMANDS, SHOWN = ("python",), ("console", "bash"), ("text",)


class Block(NamedTuple):
    path: Path
    line: int
    lang: str
    body: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def documents() -> List[Path]:
    """README.md and every page of the site (docs/, without the result files it includes)."""
    pages = sorted(p for p in (ROOT / "docs").rglob("*.md") if "results" not in p.relative_to(ROOT / "docs").parts)
    return [ROOT / "README.md", *pages]


def blocks(path: Path) -> List[Block]:
    text = path.read_text()
    return [Block(path, text.count("\n", 0, m.start()) + 1, m.group("lang").strip(), m.group("body"))
            for m in FENCE.finditer(text)]


def all_blocks() -> List[Block]:
    return [b for path in documents() for b in blocks(path)]


def commands(body: str) -> List[List[str]]:
    """The command lines of a shell block (continuations joined, comments dropped), as argv lists."""
    joined = re.sub(r"\\\n", " ", body)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _run(argv, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _check_cli(args: List[str]) -> str:
    """'' when the margreg-fast command line parses and configures (``--help``: prints the help); else why not."""
    from margreg_fast.kit.cli import build_parser, config_from_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parsed = build_parser().parse_args(args)
            if parsed.command in ("experiment", "train", "select", "claims"):
                config_from_args(parsed)
    except SystemExit as exit_:
        return "" if exit_.code == 0 else err.getvalue()[-2000:]
    except (TypeError, ValueError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _check_pip(args: List[str]) -> str:
    setup = (ROOT / "setup.py").read_text()
    for spec in (a for a in args if not a.startswith("-")):
        path, _, extras = spec.partition("[")
        if not (ROOT / path).exists():
            return f"pip install {spec}: no path {path!r} in the repository"
        for extra in filter(None, extras.rstrip("]").split(",")):
            if not re.search(rf"[\"']{re.escape(extra)}[\"']", setup):
                return f"pip install {spec}: setup.py defines no extra {extra!r}"
    return ""


def check_command(argv: List[str]) -> str:
    """'' when the command would run as written (see the module docstring); else why not."""
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", argv[0]):
        argv = argv[1:]  # environment assignments
    if not argv:
        return ""
    head = argv[0]
    if head == "make":
        out = _run(["make", "-n", *argv[1:]])
        return "" if out.returncode == 0 else f"make -n {' '.join(argv[1:])}: {out.stderr}"
    if head == "margreg-fast":
        argv = ["python", "-m", "margreg_fast", *argv[1:]]
    if head in ("python", "python3", "margreg-fast") and argv[1:4] == ["-m", "margreg_fast", "build-native"]:
        out = _run([sys.executable, *argv[1:]], timeout=600)
        return "" if out.returncode == 0 else out.stderr[-2000:]
    if head in ("python", "python3", "margreg-fast") and argv[1:3] == ["-m", "margreg_fast"]:
        return _check_cli(argv[3:])
    if head == "pip" and argv[1:2] == ["install"]:
        return _check_pip(argv[2:])
    if head in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
        return "" if (ROOT / argv[1]).is_file() else f"no script {argv[1]}"
    if "/" in head:
        return "" if (ROOT / head).is_file() else f"no script {head}"
    return f"no check for the command {head!r}: mark the block ```text if it is not meant to be run"


def check_block(block: Block) -> str:
    """'' when the block passes its check (see the module docstring); else why not."""
    if block.lang in RUN:
        out = subprocess.run([sys.executable, "-c", block.body], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        return "" if out.returncode == 0 else f"exit status {out.returncode}: {out.stderr[-3000:]}"
    if block.lang in COMMANDS:
        return "\n".join(f"{' '.join(argv)}: {why}" for argv in commands(block.body) if (why := check_command(argv)))
    if block.lang in SHOWN:
        return ""
    return f"a code block in ```{block.lang or '(no language)'}: mark it python, console, bash or text"
