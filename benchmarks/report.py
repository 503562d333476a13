"""Result files of the benchmark scripts: a CSV of the rows and a markdown table that names its command.

Each markdown file is self-contained (title, table, the command that produced it), so the documentation
can include it verbatim (mkdocs.yml: pymdownx.snippets) and every number there traces back to a committed output of a documented command.
"""
from __future__ import annotations

import csv
import os
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as run from the repository root: ``python benchmarks/<script>.py ARGS``."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), ROOT)
    return shlex.join(["python", script, *argv[1:]])


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> List[str]:
    """A markdown table; ``align`` holds one character per column, ``l`` or ``r``."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(cells) + " |" for cells in (list(header), rule, *rows)]


def write_csv(path: Path, rows: List[dict], fields: Optional[Sequence[str]] = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields or rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path, title: str, body: List[str], command: str) -> str:
    """Write ``title``, ``body`` (lines) and the producing command to ``path``; return the text."""
    text = "\n".join([title, "", *body, "", f"Produced by `{command}`."]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def publish(stem: str, rows: List[dict], title: str, body: List[str]) -> str:
    """Write ``RESULTS/stem.csv`` (``rows``) and ``RESULTS/stem.md`` (``title``, ``body`` and this run's
    command line); return the Markdown text."""
    write_csv(RESULTS / f"{stem}.csv", rows)
    return write_markdown(RESULTS / f"{stem}.md", title, body, command_line())
