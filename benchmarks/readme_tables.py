"""Copy the benchmark result files into the README, verbatim, where it asks for them.

The README marks each included file with a pair of comments::

    <!-- include benchmarks/results/head_cpu.md -->
    ...the file's text, replaced on every run...
    <!-- end include -->

    python benchmarks/readme_tables.py           # rewrite README.md
    python benchmarks/readme_tables.py --check   # exit 1 if README.md is out of date
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- include (\S+) -->\n)(.*?)(<!-- end include -->)", re.S)


def expand(text: str, root: Path = ROOT) -> str:
    """``text`` with every include block holding the current text of its file."""
    return BLOCK.sub(lambda m: m.group(1) + (root / m.group(2)).read_text() + m.group(4), text)


def included_files(text: str) -> list:
    """The paths named by the include blocks of ``text``, in order."""
    return [m.group(2) for m in BLOCK.finditer(text)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is out of date")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = expand(text)
    if args.check:
        if new != text:
            print("README.md is out of date: run python benchmarks/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print(f"README.md: {len(included_files(text))} included file(s) refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
