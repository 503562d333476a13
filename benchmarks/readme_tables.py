"""Write the README's claims table, generated from the committed claims (docs/results/claims/claims.json).

The README marks the table with a pair of comments::

    <!-- claims table: python benchmarks/readme_tables.py -->
    ...the table, rewritten on every run...
    <!-- end claims table -->

    python benchmarks/readme_tables.py           # rewrite README.md
    python benchmarks/readme_tables.py --check   # exit 1 if README.md is out of date

The documentation site needs no such step: its results pages include the committed result files
when it is built (mkdocs.yml, pymdownx.snippets).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLAIMS = ROOT / "docs" / "results" / "claims" / "claims.json"
BLOCK = re.compile(r"(<!-- claims table: python benchmarks/readme_tables.py -->\n)(.*?)(<!-- end claims table -->)", re.S)
VERDICTS = ("SUPPORTED", "CONTRADICTED", "INCONCLUSIVE")


def _cell(verdicts: list) -> str:
    """One claim against one comparator over its metrics: "SUPPORTED (3/3)", or each verdict's count."""
    counts, total = Counter(verdicts), len(verdicts)
    return ", ".join(f"{v} ({counts[v]}/{total})" for v in VERDICTS if counts[v])


def claims_summary(claims: dict) -> str:
    """The claims table of README.md: one row per claim of the paper, one column per comparator; each
    cell counts the verdicts of the claim's metrics (the paired intervals of docs/results/claims/claims.json)."""
    rows, comparators = {}, []
    for row in claims["claims"]:
        for cell in row["versus"]:
            if cell["comparator"] not in comparators:
                comparators.append(cell["comparator"])
            rows.setdefault(row["claim"], {}).setdefault(cell["comparator"], []).append(cell["verdict"])
    seeds = claims["plan"]["config"]["seeds"]
    lines = [f"| claim of the paper | {' | '.join(f'mdr against {c}' for c in comparators)} |",
             "|---" * (len(comparators) + 1) + "|"]
    for claim, by_comparator in rows.items():
        lines.append(f"| {claim} | " + " | ".join(_cell(by_comparator.get(c, [])) for c in comparators) + " |")
    return ("\n".join(lines) + f"\n\nEach cell: the verdicts of the claim's metrics (paired 95% intervals over "
            f"{len(seeds)} seeds), generated from `docs/results/claims/claims.json` by "
            "`python benchmarks/readme_tables.py`.\n")


def expand(text: str, claims_file: Path = CLAIMS) -> str:
    """``text`` with its claims-table block holding the table generated from ``claims_file``."""
    table = claims_summary(json.loads(claims_file.read_text()))
    return BLOCK.sub(lambda m: m.group(1) + table + m.group(3), text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is out of date")
    args = parser.parse_args(argv)
    text = README.read_text()
    if not BLOCK.search(text):
        print("README.md has no claims-table block", file=sys.stderr)
        return 1
    new = expand(text)
    if args.check:
        if new != text:
            print("README.md's claims table is out of date: run python benchmarks/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print("README.md: claims table regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
