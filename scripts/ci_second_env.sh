#!/usr/bin/env bash
# CI's second stage (.ci/run, after `make test`): the package as a user installs it, outside the project's .venv.
#
#   1. `python -m build`: one py3-none-any wheel with no compiled file, and an sdist; `twine check --strict`.
#   2. A fresh venv with torch 2.13.0 (the oldest torch the suite passes on) and numpy; the wheel installed
#      with --no-index (timed: nothing to compile, nothing to fetch); from another directory, the README's
#      first Python block: the first call compiles the native kernel into an empty TORCH_EXTENSIONS_DIR
#      (timed) while a second process started meanwhile waits on torch's lock; a third process loads
#      the finished build (timed, no "compiling" line).
#   3. The compiler hidden (CXX=/bin/false, a fresh TORCH_EXTENSIONS_DIR): one NativeBuildWarning, the
#      torch backend's right answer, backend="native" refused with the reason.
#   4. An environment that already has torch 2.14.1 (the CUDA build, on the CPU) and numpy 1.24.4 (the
#      lowest numpy install_requires allows): the wheel leaves both in place, and the core tests pass
#      there against the installed package (head op on every backend available, estimators, regulariser,
#      passes on BatchNorm and dropout models, the fraction).
#
# Environments are kept under $MARGREG_FAST_CI_CACHE (default ~/.cache/margreg_fast_ci) and reused when
# present: the torch 2.14.1 one is built once per machine (its wheels lie on this machine's disk).
# Usage: scripts/ci_second_env.sh [PYTHON_WITH_BUILD_AND_TWINE]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${1:-$ROOT/.venv/bin/python}
CACHE=${MARGREG_FAST_CI_CACHE:-$HOME/.cache/margreg_fast_ci}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE"
SECONDS=0
step() { printf '\n[second stage %4ds] %s\n' "$SECONDS" "$*"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
fail() { echo "second stage FAILED: $*" >&2; exit 1; }
pipq() { "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

step "1. python -m build, twine check"
"$PY" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { tail -50 "$WORK/build.log"; fail "build"; }
"$PY" -m twine check --strict "$WORK"/dist/*
WHEEL=$(ls "$WORK"/dist/*.whl)
[ "$(ls "$WORK"/dist | wc -l)" = 2 ] && ls "$WORK"/dist/*.tar.gz >/dev/null || fail "expected one wheel and one sdist"
"$PY" - "$WHEEL" <<'EOF'
import sys, zipfile
wheel = sys.argv[1]
assert wheel.endswith("-py3-none-any.whl"), wheel
names = zipfile.ZipFile(wheel).namelist()
compiled = [n for n in names if n.endswith((".so", ".pyd", ".dll", ".dylib", ".o"))]
assert not compiled, compiled
for needed in ("margreg_fast/csrc/energy_head.cpp", "margreg_fast/kit/configs/blockmnist_weights.json"):
    assert needed in names, needed
print(f"{wheel.rsplit('/', 1)[-1]}: pure Python, {len(names)} files, the C++ source and the configs inside")
EOF

# The README's first Python block, run from a directory that is not the checkout.
SNIPPET=$WORK/readme_snippet.py
python3 - "$ROOT/README.md" "$SNIPPET" <<'EOF'
import re, sys
code = re.search(r"```python\n(.*?)```", open(sys.argv[1]).read(), re.S).group(1)
open(sys.argv[2], "w").write(code)
EOF
RUN=$WORK/elsewhere
mkdir -p "$RUN"

step "2. fresh venv, torch 2.13.0, the wheel, the README snippet"
FRESH=$WORK/venv-fresh
python3 -m venv "$FRESH"
pipq "$FRESH/bin/python" -m pip install -q torch==2.13.0 "numpy==2.4.6"
t=$(now)
pipq "$FRESH/bin/python" -m pip install -q --no-index "$WHEEL"
echo "wheel install (torch and numpy present, --no-index): $(elapsed "$t") s"
export TORCH_EXTENSIONS_DIR=$WORK/ext
(cd "$RUN" && "$FRESH/bin/python" -c "import margreg_fast, sys; assert '/site-packages/' in margreg_fast.__file__, margreg_fast.__file__")
t=$(now)
(cd "$RUN" && "$FRESH/bin/python" "$SNIPPET" >"$WORK/first.out" 2>"$WORK/first.err") & first=$!
sleep 3
(cd "$RUN" && "$FRESH/bin/python" "$SNIPPET" >"$WORK/second.out" 2>"$WORK/second.err") & second=$!
wait $first || { cat "$WORK/first.err"; fail "first process"; }
echo "first call, compiling the kernel: $(elapsed "$t") s"
wait $second || { cat "$WORK/second.err"; fail "second process (started during the build)"; }
for f in first second; do
  [ "$(grep -c "compiling the native CPU kernel" "$WORK/$f.err")" = 1 ] || { cat "$WORK/$f.err"; fail "$f: not one compiling line"; }
done
cmp "$WORK/first.out" "$WORK/second.out" || fail "the two processes printed different results"
cat "$WORK/first.out"
t=$(now)
(cd "$RUN" && "$FRESH/bin/python" "$SNIPPET" >"$WORK/third.out" 2>"$WORK/third.err")
echo "a later process, the cached kernel (whole snippet): $(elapsed "$t") s"
! grep -q "compiling" "$WORK/third.err" || fail "the third process compiled again"
cmp "$WORK/first.out" "$WORK/third.out" || fail "the cached kernel printed different results"
(cd "$RUN" && "$FRESH/bin/python" - <<'EOF')
import time
t = time.perf_counter()
import torch, margreg_fast
from margreg_fast._ops import native
t1 = time.perf_counter()
assert "native" in margreg_fast.available_backends("cpu")
print(f"import: {t1 - t:.2f} s; loading the cached kernel: {time.perf_counter() - t1:.3f} s ({native.build_name()})")
EOF

step "3. the compiler hidden: one warning, the torch backend's answer"
(cd "$RUN" && CXX=/bin/false TORCH_EXTENSIONS_DIR=$WORK/ext-nocc "$FRESH/bin/python" - "$SNIPPET" <<'EOF')
import sys, warnings
import torch
import margreg_fast as mf
from margreg_fast import NativeBuildWarning

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    exec(open(sys.argv[1]).read(), {"__name__": "__main__"})  # the README snippet, unchanged (backend "auto")
    z0, z1 = torch.randn(64, 100), torch.randn(64, 100)
    d = mf.energy_difference(z0, z1).difference
    d2 = mf.energy_difference(z0, z1).difference
builds = [str(w.message) for w in caught if w.category is NativeBuildWarning]
fallbacks = [str(w.message) for w in caught if "uses the torch reference" in str(w.message)]
assert len(builds) == 1 and not fallbacks, (builds, fallbacks)
assert "could not be compiled" in builds[0] and "python -m margreg_fast build-native" in builds[0], builds[0]
truth = torch.logsumexp(z1.double(), 1) - torch.logsumexp(z0.double(), 1)
torch.testing.assert_close(d.double(), truth, rtol=1e-5, atol=1e-5)
assert torch.equal(d, d2) and "native" not in mf.available_backends("cpu")
try:
    mf.energy_difference(z0, z1, backend="native")
    raise SystemExit("backend='native' should have been refused")
except RuntimeError as err:
    assert "could not be compiled" in str(err), err
print("compiler hidden, the one warning:", builds[0])
EOF

step "4. an environment with torch 2.14.1: the wheel keeps it; the core tests there"
OTHER=$CACHE/venv-torch2.14.1
if [ ! -f "$OTHER/.ready" ]; then
  rm -rf "$OTHER"
  python3 -m venv "$OTHER"
  t=$(now)
  pipq "$OTHER/bin/python" -m pip install -q torch==2.14.1 numpy==1.24.4 torchvision==0.29.1 timm==1.0.31 \
    pytest==9.2.0 pytest-timeout==2.4.0
  echo "built $OTHER: $(elapsed "$t") s"
  touch "$OTHER/.ready"
fi
"$OTHER/bin/python" -m pip uninstall -q -y margreg_fast >/dev/null 2>&1 || true
before=$("$OTHER/bin/python" -m pip freeze | grep -iE "^(torch|numpy|triton|nvidia-[a-z0-9-]+)==" | sort)
t=$(now)
pipq "$OTHER/bin/python" -m pip install -q --no-index "$WHEEL"
echo "wheel install next to torch 2.14.1: $(elapsed "$t") s"
after=$("$OTHER/bin/python" -m pip freeze | grep -iE "^(torch|numpy|triton|nvidia-[a-z0-9-]+)==" | sort)
[ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after"); fail "installing the wheel changed torch or its dependencies"; }
echo "$after" | grep -E "^(torch|numpy)=="
"$OTHER/bin/python" -m pip check
# The tests (and the benchmark modules some import), copied away from the checkout so that `margreg_fast`
# is the installed wheel.
mkdir -p "$WORK/t" && cp -r tests benchmarks "$WORK/t/"
unset TORCH_EXTENSIONS_DIR  # torch's default cache: kept between CI runs on this machine
t=$(now)
(cd "$WORK/t" && TRITON_INTERPRET=1 PYTHONPATH="$WORK/t" "$OTHER/bin/python" -m pytest -q -p no:cacheprovider \
  --timeout 900 \
  tests/ops tests/estimators tests/test_penalty.py tests/test_regularizer.py tests/test_models_conditions.py \
  tests/test_fraction.py)
echo "core tests under torch 2.14.1: $(elapsed "$t") s"

step "second stage passed"
