"""A missing optional dependency: the command (margreg_fast.__main__) names the pip extra that installs it,
with a pip command that works as typed (the package is on no index)."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

from margreg_fast.kit.extras import extra_requirements, install_hint

REPO = Path(__file__).resolve().parents[2]


def test_hint_names_the_extra_of_a_kit_dependency():
    hint = install_hint(ModuleNotFoundError("No module named 'sklearn.datasets'", name="sklearn.datasets"))
    assert "'sklearn'" in hint and "'experiments'" in hint and "pip install -e '.[experiments]'" in hint
    assert "margreg_fast[" not in hint  # on no index: `pip install 'margreg_fast[experiments]'` cannot work
    assert install_hint(ModuleNotFoundError("No module named 'foo'", name="foo")) is None


def test_hints_pip_command_resolves_as_typed():
    """The command of the hint, as printed, resolves here without an index (the extra is installed)."""
    requirements = extra_requirements("experiments")
    assert {r.split(">=")[0] for r in requirements} == {"captum", "scikit-learn", "scipy", "mlxtend", "matplotlib",
                                                         "tqdm"}
    hint = install_hint(ModuleNotFoundError("No module named 'tqdm'", name="tqdm"))
    command = shlex.split(hint.split("packages: ", 1)[1].split(", or in a clone", 1)[0])
    assert command[:2] == ["pip", "install"] and command[2:] == requirements
    done = subprocess.run([sys.executable, "-m", *command, "--dry-run", "--no-index", "-q"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cli_without_tqdm_names_the_experiments_extra(tmp_path):
    code = ("import sys; sys.modules['tqdm'] = None\n"  # makes `import tqdm` raise ModuleNotFoundError
            "from margreg_fast.__main__ import main\n"
            f"sys.exit(main(['experiment', 'spurious', '--out', {str(tmp_path)!r}]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "pip install -e '.[experiments]'" in done.stderr and "Traceback" not in done.stderr
