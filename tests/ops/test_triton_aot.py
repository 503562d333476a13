"""CUDA readiness without a GPU: every Triton head kernel a GPU launches compiles ahead of time for
sm_80 (A100) and sm_90 (H100) with the ptxas of triton's wheel, and none spills registers.

The interpreter (what the other Triton tests run) never runs Triton's compiler, so what only the
compiler rejects -- or a kernel whose tile no longer fits the register file -- would first show on
a GPU. tests/ops/aot_builds.py makes the 36 builds in one subprocess (without TRITON_INTERPRET);
Triton's kernel cache makes reruns fast (a first, uncached run compiles all 36: about a minute on
two CPU cores).
"""
import json
import os
import subprocess
import sys

import pytest

from tests.ops import aot_builds

pytest.importorskip("triton", reason="triton is an optional dependency (the GPU backend)")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "builds.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "tests.ops.aot_builds", str(out)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_build_set_is_the_issues_36():
    assert len(aot_builds.builds()) == 36


@pytest.mark.parametrize("kernel, dtype, block, arch", aot_builds.builds(),
                         ids=[aot_builds.build_id(*b) for b in aot_builds.builds()])
def test_kernel_compiles_for_the_gpu_without_register_spills(built, kernel, dtype, block, arch):
    result = built[aot_builds.build_id(kernel, dtype, block, arch)]
    assert result["ok"], result.get("error")
    # spilled registers go to local memory (cuobjdump's LOCAL) or, with ptxas 13, to the stack frame,
    # which only ptxas's own spill counts tell apart from a call frame
    assert result["LOCAL"] == 0 and result["SPILL_STORES"] == 0 and result["SPILL_LOADS"] == 0, \
        f"register spills: {result}"
    assert 0 < result["REG"] <= 255, result
