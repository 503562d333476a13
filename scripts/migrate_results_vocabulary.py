"""Rewrite result files of the experiment kit written before 0.3.0 in its vocabulary of 0.3.0.

Before 0.3.0 the kit called a training scheme (none, igr, joint, mdr, mdr@0.25, mdr%4, ...) a
"method": results.json, claims.json and a run's config.json keyed it "method" (one run or row),
"methods" (the config's list, a summary keyed by scheme) and "cheaper_methods"; the Markdown tables
written from them headed its column "method". 0.3.0 writes "scheme", "schemes" and "cheaper_schemes",
and reads only those. This script renames those keys (and those table headers) in place, keeping
every value and the key order; a file already in the new vocabulary is left byte-identical, so running
it twice changes nothing.

    python scripts/migrate_results_vocabulary.py docs/results margreg_fast/kit/configs   # every .json, .md below
    python scripts/migrate_results_vocabulary.py --check docs/results margreg_fast/kit/configs  # exit 1 if one needs it
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

#: Old key -> new key.
KEYS = {"method": "scheme", "methods": "schemes", "cheaper_methods": "cheaper_schemes"}
#: A Markdown table header row (the line before a |---| separator) with a "method" column.
_HEADER_CELL = re.compile(r"(?<=\|) method (?=\|)")


def migrate_json(value):
    """``value`` with every dict key of :data:`KEYS` renamed, recursively (order kept)."""
    if isinstance(value, dict):
        return {KEYS.get(k, k): migrate_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [migrate_json(v) for v in value]
    return value


def migrate_markdown(text: str) -> str:
    """``text`` with the "method" column header of each table (the row above ``|---``) named "scheme"."""
    lines = text.split("\n")
    for i in range(len(lines) - 1):
        if lines[i].startswith("|") and lines[i + 1].startswith("|---"):
            lines[i] = _HEADER_CELL.sub(" scheme ", lines[i])
    return "\n".join(lines)


def migrated(path: Path) -> str | None:
    """The new text of ``path``, or None when it needs no change."""
    text = path.read_text()
    if path.suffix == ".json":
        new = json.dumps(migrate_json(json.loads(text)), indent=_indent(text))
        new += "\n" if text.endswith("\n") else ""
        return new if json.loads(new) != json.loads(text) else None
    new = migrate_markdown(text)
    return new if new != text else None


def _indent(text: str):
    """The indent of a JSON text as json.dumps writes it (None: one line)."""
    m = re.search(r"\n( +)\S", text)
    return len(m.group(1)) if m else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="files, or directories searched for .json and .md files")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file needs migrating")
    args = parser.parse_args(argv)
    files = sorted({f for p in args.paths for f in ([p] if p.is_file() else [*p.rglob("*.json"), *p.rglob("*.md")])})
    stale = []
    for path in files:
        new = migrated(path)
        if new is not None:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{'needs migrating' if args.check else 'migrated'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
