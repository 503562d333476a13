"""The README's usage example runs as written."""
import re
import subprocess
import sys
from pathlib import Path

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
