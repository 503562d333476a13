"""The README: its usage example runs as written, and its benchmark numbers come from committed result files."""
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.readme_tables import expand, included_files

README = Path(__file__).resolve().parents[1] / "README.md"


def _usage_block():
    text = README.read_text()
    usage = text[text.index("## Usage"):]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


def test_usage_example_is_ten_lines_and_runs():
    code = _usage_block()
    assert len(code.strip().splitlines()) == 10
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=README.parent)
    assert out.returncode == 0, out.stderr
    assert "'ce'" in out.stdout and "'penalty'" in out.stdout


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert first_block.splitlines()[0].startswith("make demo") and first_block.splitlines()[1].startswith("make test")


# ---------------------------------------------------------------- provenance of the benchmark numbers
RESULT_DIRS = ("benchmarks/results", "docs/results")
#: A number not glued to a letter, digit, dot or underscore on its left (so not the 32 of fp32).
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])\d+(?:\.\d+)?")


def _benchmark_section():
    """The estimator and benchmark sections (every number there must come from a result file)."""
    text = README.read_text()
    start = text.index("## Estimators, judged by the model they train")
    end = text.index("\n## ", text.index("## Benchmarks"))
    return text[start:end]


def _committed_results():
    """Text of every committed file under RESULT_DIRS (the files on disk when git is unavailable)."""
    root = README.parent
    try:
        listed = subprocess.run(["git", "ls-files", *RESULT_DIRS], cwd=root, capture_output=True, text=True,
                                check=True, timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(root)) for d in RESULT_DIRS for p in (root / d).rglob("*") if p.is_file()]
    return {path: (root / path).read_text(errors="ignore") for path in listed if (root / path).is_file()}


def test_benchmark_tables_are_the_result_files_verbatim():
    text = README.read_text()
    assert included_files(_benchmark_section()), "the benchmark section includes no result file"
    assert expand(text) == text, "README tables differ from their files: run python benchmarks/readme_tables.py"


def test_every_benchmark_number_is_in_a_committed_result_file():
    committed = _committed_results()
    known = {number for text in committed.values() for number in NUMBER.findall(text)}
    missing = sorted(set(NUMBER.findall(_benchmark_section())) - known)
    assert not missing, f"numbers in the README's benchmark section found in no committed result file: {missing}"
    for path in included_files(_benchmark_section()):
        assert path in committed, f"{path} is included in the README but not committed"
