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
    cell counts the verdicts of the claim's metrics (the paired intervals of docs/results/claims/claims.json).
    With scale-free rows (``claims --scale-free``) each comparator gets a second column, the verdicts after
    the logit scale is taken out, and a sentence generated from the verdicts says which claims survive."""
    if claims.get("scale_free"):
        return scale_free_summary(claims)
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


def scale_free_summary(claims: dict) -> str:
    """claims_summary with a raw and a scale-free column per comparator, and the survival sentence."""
    from margreg_fast.kit.experiments.confounds_report import NOT_A_CLAIM, survival

    rows, comparators = {}, []
    for row in claims["scale_free"]:
        if row["claim"] == NOT_A_CLAIM:
            continue
        for raw, free in zip(row["raw"], row["scale_free"]):
            c = raw["comparator"]
            if c not in comparators:
                comparators.append(c)
            cell = rows.setdefault(row["claim"], {}).setdefault(c, {"raw": {}, "free": []})
            cell["raw"][row["metric"]] = raw["verdict"]  # a metric with two twins counts once raw
            cell["free"].append(free["verdict"])
    seeds = claims["plan"]["config"]["seeds"]
    lines = ["| claim of the paper | " + " | ".join(f"mdr against {c} | scale-free" for c in comparators) + " |",
             "|---" * (2 * len(comparators) + 1) + "|"]
    for claim, by in rows.items():
        lines.append(f"| {claim} | " + " | ".join(f"{_cell(list(by[c]['raw'].values()))} | {_cell(by[c]['free'])}"
                                                 if c in by else " | " for c in comparators) + " |")
    verdicts = survival(claims["scale_free"])
    kept = [f"\"{s['claim']}\" against {s['comparator']}" for s in verdicts if s["survives"] is True]
    lost = [f"\"{s['claim']}\" against {s['comparator']}" for s in verdicts if s["survives"] is False]
    sentence = ("After the logit scale is taken out (temperature scaling; the density shift also in each model's "
                f"own units), the claims that survive are: {', '.join(kept) or 'none'}; those that do not: "
                f"{', '.join(lost) or 'none'}. Every other claim is measured by a scale-free metric, so its verdict "
                "stands as it is.")
    return ("\n".join(lines) + f"\n\n{sentence}\n\nEach cell: the verdicts of the claim's metrics (paired 95% intervals "
            f"over {len(seeds)} seeds), raw and scale-free, generated from `docs/results/claims/claims.json` by "
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
