"""The documentation site builds with warnings as errors, its internal links resolve, and every code
block of the README and the docs passes the check its language names (tests/docs_blocks.py)."""
import html.parser
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests import docs_blocks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built by `make docs`'s command (mkdocs.yml sets strict: warnings are errors)."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=900, env=env)
    assert built.returncode == 0, built.stderr[-5000:]
    assert "WARNING" not in built.stderr, built.stderr[-5000:]
    return out


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for name in ("href", "src"):
            if tag in ("a", "img") and attrs.get(name):
                self.links.append(attrs[name])


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


def test_every_internal_link_of_the_built_site_resolves(site):
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")  # 404.html links from the server's root
    assert len(pages) > 10, "the site has too few pages"
    parsed = {page: _parse(page) for page in pages}
    broken = []
    for page, links in parsed.items():
        for link in links.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("mailto:"):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {link} (no file)")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if parts.fragment not in ids:
                    broken.append(f"{page.relative_to(site)}: {link} (no anchor)")
    assert not broken, "\n".join(broken)


def test_the_results_pages_hold_the_committed_tables(site):
    """The results pages include the result files at build time: a row of each table is on its page."""
    pairs = {"findings/claims/index.html": "docs/results/claims/claims_table.md",
             "findings/frontier/index.html": "docs/results/claims/frontier.md",
             "findings/cost-leakage/index.html": "benchmarks/results/cost_leakage.md",
             "findings/estimators/index.html": "docs/results/claims/estimator.md",
             "findings/benchmarks/index.html": "benchmarks/results/train_step.md"}
    for page, result in pairs.items():
        row = next(line for line in (ROOT / result).read_text().splitlines() if line.startswith("| ") and "---" not in line)
        first_cell = row.strip("| ").split(" | ")[0]
        assert first_cell in (site / page).read_text(), (page, result, first_cell)


@pytest.mark.parametrize("block", docs_blocks.all_blocks(), ids=lambda b: b.id)
def test_code_block(block):
    why = docs_blocks.check_block(block)
    assert not why, f"{block.id} ({block.lang}):\n{why}"


def test_the_block_checks_can_fail():
    """The checks themselves: a failing Python block, an unknown make target, a wrong CLI flag, an unmarked block."""
    block = docs_blocks.Block(ROOT / "README.md", 1, "python", "raise SystemExit(3)\n")
    assert docs_blocks.check_block(block)
    assert docs_blocks.check_block(block._replace(lang="console", body="make no-such-target\n"))
    assert docs_blocks.check_block(block._replace(lang="console", body="margreg-fast experiment --no-such-flag\n"))
    assert docs_blocks.check_block(block._replace(lang="console", body="pip install '.[no-such-extra]'\n"))
    assert docs_blocks.check_block(block._replace(lang="", body="print(1)\n"))
    assert not docs_blocks.check_block(block._replace(lang="console", body="make -n test  # a comment\n"))


def test_the_api_reference_documents_every_public_name():
    import margreg_fast

    page = (ROOT / "docs" / "reference" / "api.md").read_text()
    documented = set(re.findall(r"^::: margreg_fast\.(\w+)$", page, re.M))
    assert documented == set(margreg_fast.__all__), (sorted(set(margreg_fast.__all__) - documented),
                                                    sorted(documented - set(margreg_fast.__all__)))
