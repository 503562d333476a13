"""Compiling the native kernel on first use (margreg_fast._ops.native): the cache key, the finished build
reused without a compiler, the prebuild command, and a failed build (the compiler hidden by
CXX=/bin/false): one NativeBuildWarning naming cause and fix, the torch backend's results, and
backend="native" refused.

Each scenario runs in a fresh process (the build is tried once per process). The first compile and a
second process waiting on torch's lock are exercised in CI's second stage (scripts/ci_second_env.sh),
which times them; here the suite's own build (tests/ops/conftest.py) is the one reused.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch

from margreg_fast._ops import native

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env):
    """Run ``code`` in a fresh interpreter with ``env`` added to this environment."""
    return _run("-c", code, **env)


def _run(*args: str, **env):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, *args], env=full_env, capture_output=True, text=True, timeout=300)


def test_cache_key_names_torch_python_and_instruction_set():
    name = native.build_name()
    version = torch.__version__.replace(".", "_").replace("+", "_")
    assert f"torch{version}_py{sys.version_info[0]}{sys.version_info[1]}_{native.instruction_set()}_" in name
    assert native.build_name("avx2") != native.build_name("default")
    assert "-mavx2" in native.compile_flags("avx2") and "-mavx2" not in native.compile_flags("default")


def test_instruction_set_follows_torchs_capability_of_the_running_cpu():
    done = _python("from margreg_fast._ops import native; print(native.instruction_set())",
                   ATEN_CPU_CAPABILITY="default")
    assert done.returncode == 0 and done.stdout.split() == ["default"], done.stderr[-2000:]


def test_extensions_dir_is_respected(tmp_path):
    done = _python("from margreg_fast._ops import native; print(native.build_directory(native.build_name()))",
                   TORCH_EXTENSIONS_DIR=str(tmp_path))
    assert done.stdout.strip() == str(tmp_path / native.build_name()), done.stderr[-2000:]


def test_finished_build_loads_without_a_compiler():
    """The suite's build (same TORCH_EXTENSIONS_DIR) is loaded from its stamp: no compiler, no line."""
    assert native.is_available(torch.device("cpu")), native.unavailable_reason(torch.device("cpu"))
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import margreg_fast as mf; print(mf.available_backends('cpu'))")
    done = _python(code, CXX="/bin/false")
    assert done.returncode == 0 and "'native'" in done.stdout, done.stderr[-2000:]
    assert "compiling" not in done.stderr
    done = _run("-m", "margreg_fast", "build-native", CXX="/bin/false")
    assert done.returncode == 0 and done.stdout.strip().endswith(f"{native.build_name()}.so"), done.stderr[-2000:]


FAILED_BUILD = """
import warnings
import torch
import margreg_fast as mf
from margreg_fast import NativeBuildWarning

z0, z1 = torch.randn(32, 50), torch.randn(32, 50)
target = torch.randint(0, 50, (32,))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    auto = [mf.energy_penalty(z0, z1, 0.1, target) for _ in range(2)]
    backends = mf.available_backends("cpu")
reference = mf.energy_penalty(z0, z1, 0.1, target, backend="torch")
for out in auto:
    assert torch.equal(out.penalty, reference.penalty) and torch.equal(out.ce, reference.ce)
assert "native" not in backends and "torch" in backends
print("WARNINGS", [(w.category.__name__, str(w.message)) for w in caught if issubclass(w.category, UserWarning)])
try:
    mf.energy_penalty(z0, z1, 0.1, target, backend="native")
except RuntimeError as err:
    print("REFUSED", err)
"""


def test_failed_build_warns_once_and_uses_the_torch_backend(tmp_path):
    done = _python(FAILED_BUILD, CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    warned = eval(done.stdout.split("WARNINGS ", 1)[1].splitlines()[0])
    assert len(warned) == 1 and warned[0][0] == "NativeBuildWarning", warned
    message = warned[0][1]
    assert "could not be compiled" in message and "/bin/false" in message  # the cause
    assert "python -m margreg_fast build-native" in message and "C++ compiler" in message  # the fix
    refused = done.stdout.split("REFUSED ", 1)[1]
    assert "backend 'native' is unavailable" in refused and "could not be compiled" in refused
    assert done.stderr.count("compiling the native CPU kernel") == 1
    assert not list(tmp_path.glob("*/*.so"))


def test_prebuild_command_fails_with_the_builds_error(tmp_path):
    done = _run("-m", "margreg_fast", "build-native", CXX="/bin/false", TORCH_EXTENSIONS_DIR=str(tmp_path))
    assert done.returncode == 1 and "could not be compiled" in done.stderr and "/bin/false" in done.stderr
