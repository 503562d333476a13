"""A missing optional dependency: the command (margreg_fast.__main__) names the pip extra that installs it."""
import os
import subprocess
import sys
from pathlib import Path

from margreg_fast.kit.extras import install_hint

REPO = Path(__file__).resolve().parents[2]


def test_hint_names_the_extra_of_a_kit_dependency():
    hint = install_hint(ModuleNotFoundError("No module named 'sklearn.datasets'", name="sklearn.datasets"))
    assert "'sklearn'" in hint and "pip install 'margreg_fast[experiments]'" in hint
    assert install_hint(ModuleNotFoundError("No module named 'foo'", name="foo")) is None


def test_cli_without_tqdm_names_the_experiments_extra(tmp_path):
    code = ("import sys; sys.modules['tqdm'] = None\n"  # makes `import tqdm` raise ModuleNotFoundError
            "from margreg_fast.__main__ import main\n"
            f"sys.exit(main(['experiment', 'spurious', '--out', {str(tmp_path)!r}]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "pip install 'margreg_fast[experiments]'" in done.stderr and "Traceback" not in done.stderr
