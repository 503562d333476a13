"""The README: short, its quickstart runs as written, its claims table is generated from the committed
claims, its support matrix is the matrix test's, and its links resolve. (Every code block of it runs
or is checked in tests/test_docs_site.py.)"""
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.readme_tables import BLOCK, expand
from tests.matrix import cells

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_CHARS = 15_000


def _section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_readme_is_at_most_15000_characters():
    assert len(README.read_text()) <= MAX_CHARS, len(README.read_text())


def test_quickstart_is_ten_lines_and_runs():
    code = re.search(r"```python\n(.*?)```", _section("Quickstart"), re.S).group(1)
    assert len(code.strip().splitlines()) == 10
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "'ce'" in out.stdout and "'penalty'" in out.stdout


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    lines = first_block.splitlines()
    assert lines[0].startswith("make demo") and lines[1].startswith("make test") and len(lines) == 2


def test_readme_has_the_sections_a_newcomer_looks_for():
    text = README.read_text()
    for heading in ("Install", "Quickstart", "In your training loop", "Choosing the estimator, the weight and the fraction",
                    "Support matrix", "Claims", "Documentation", "How to cite"):
        assert f"\n## {heading}\n" in text, heading
    assert re.search(r"!\[[^\]]+\]\(docs/figures/[^)]+\.png\)", text), "no figure"


def test_readme_names_no_issue_and_tells_no_story_of_runs():
    text = README.read_text()
    assert not re.search(r"\bissues?\b|#\d", text, re.I), re.search(r"\bissues?\b|#\d", text, re.I)
    for story in ("were deleted", "rerun", "reran", "retrain", "session"):
        assert story not in text, story


def test_claims_table_is_generated_from_the_committed_claims():
    text = README.read_text()
    assert BLOCK.search(text), "README.md has no claims-table block"
    assert expand(text) == text, "README's claims table differs from claims.json: run python benchmarks/readme_tables.py"


def test_every_relative_link_of_the_readme_resolves():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    assert local, "the README links to no file of the repository"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


# ---------------------------------------------------------------- the support matrix is the matrix test's
MODES = {"eager": "eager", "compile": "compile"}
PROCESSES = {"1 process": "single", "DDP": "ddp", "FSDP2": "fsdp"}
COLUMNS = {("fp32", "BatchNorm"): ("fp32", "bn"), ("fp32", "dropout"): ("fp32", "dropout"),
           ("fp32", "SDPA"): ("fp32", "sdpa"), ("bf16", "BatchNorm"): ("bf16", "bn"),
           ("bf16", "dropout"): ("bf16", "dropout"), ("bf16", "SDPA"): ("bf16", "sdpa")}


def _matrix_rows():
    """{(mode, processes): [cell text, ...]} from the README's support-matrix table."""
    rows = {}
    for line in _section("Support matrix").splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 8 and cols[0] in MODES and cols[1] in PROCESSES:
            rows[(MODES[cols[0]], PROCESSES[cols[1]])] = cols[2:]
    return rows


def test_support_matrix_is_the_matrix_test():
    """Each cell says "tested" exactly where the matrix test runs the default estimator there and expects
    it to train, and the exact-estimator errors listed are the ones the matrix test expects."""
    rows = _matrix_rows()
    assert len(rows) == len(MODES) * len(PROCESSES), sorted(rows)
    all_cells = set(cells.cells())
    for (mode, processes), texts in rows.items():
        for text, (precision, model) in zip(texts, COLUMNS.values()):
            cell = cells.Cell(mode, processes, precision, model, "default")
            assert cell in all_cells and cells.expected_error(cell) is None, cell
            assert text.startswith("tested"), (cell, text)
    section = _section("Support matrix")
    for cell in all_cells:
        error = cells.expected_error(cell)
        if error is not None:
            assert error in section, f"the README does not name the error of {cell.id}: {error}"


STACK_COLUMNS = {"activation checkpointing": "checkpoint", "inference mode": "inference",
                 "timm BatchNormAct2d in place": "bnact", "inductor's own RNG": "inductor_rng"}


def test_stacks_table_is_the_matrix_tests_stack_columns():
    """The second table: the columns of the stacks people train in, where the matrix test has them."""
    stacks = getattr(cells, "STACKS", ())
    rows = {}
    for line in _section("Support matrix").splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 2 + len(STACK_COLUMNS) and cols[0] in MODES and cols[1] in PROCESSES:
            rows[(MODES[cols[0]], PROCESSES[cols[1]])] = cols[2:]
    if not stacks:
        assert not rows
        return
    assert set(STACK_COLUMNS.values()) == set(stacks), stacks
    all_cells = set(cells.cells())
    expected = {(c.mode, c.processes) for c in all_cells if c.model in stacks}
    assert set(rows) == expected, (sorted(rows), sorted(expected))
    for (mode, processes), texts in rows.items():
        for text, stack in zip(texts, STACK_COLUMNS.values()):
            cell = cells.Cell(mode, processes, "fp32", stack, "default")
            assert cell in all_cells and cells.expected_error(cell) is None, cell
            assert text.startswith("tested"), (cell, text)
