#!/usr/bin/env bash
# One command for a CUDA machine, with the Python it has (no packages fetched): compile the native CPU
# kernel (python -m margreg_fast build-native, into torch's extensions cache), run the head-op tests (tests/ops: Triton compiled for the GPU), the 1-process
# cells of the matrix test (tests/matrix) on the GPU, and the head-op and training-step benchmarks
# with short settings, every step under a timeout (the limits below add up to 750 s). It needs torch, triton, numpy, pytest, pytest-timeout and ninja;
# not the experiment kit's extras (captum, scikit-learn, matplotlib, tqdm).
#
# Without a GPU it still runs, on CPU: the Triton tests go through the Triton interpreter and the
# benchmarks time the CPU once, briefly; it says what it skipped and why (in OUTDIR/summary.txt too).
#
# Usage: scripts/gpu_check.sh OUTDIR [PYTHON]        (PYTHON default: python3)
# Writes to OUTDIR: env.txt, summary.txt, build.log, tests_ops.{log,xml}, tests_matrix.{log,xml}, bench_head.log,
# head_<device>.{csv,md}, bench_train_step_{eager,compile}.log and {eager,compile}/train_step[_cuda].{csv,md}.
# Per-step limits in seconds, overridable: BUILD_LIMIT (120), TEST_LIMIT (180, each of the two test
# steps), BENCH_LIMIT (90, each of the three benchmark steps): at most 750 s in all.
# Exit status: 0 if every step passed, else 1.
set -uo pipefail
if [ $# -lt 1 ]; then
    sed -n '2,/^set /p' "$0" | sed '$d'
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
PY=${2:-python3}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
: > "$OUT/summary.txt"
FAILED=0

say() { echo "gpu_check: $*" | tee -a "$OUT/summary.txt"; }

step() {  # step NAME LIMIT COMMAND...: run COMMAND under timeout, output to OUT/NAME.log
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        say "$name: passed in $((SECONDS - start)) s"
    else
        FAILED=1
        [ $rc -eq 124 ] && say "$name: TIMED OUT after $limit s" || say "$name: FAILED (exit $rc) in $((SECONDS - start)) s"
        tail -n 15 "$OUT/$name.log" | sed 's/^/    /'
    fi
}

"$PY" - > "$OUT/env.txt" 2>&1 <<'PYEOF'
import platform, numpy, torch
try:
    import triton
    triton_version = triton.__version__
except ImportError as err:
    triton_version = f"missing ({err})"
print(f"python {platform.python_version()}, torch {torch.__version__}, triton {triton_version}, numpy {numpy.__version__}")
print("cuda:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PYEOF
cat "$OUT/env.txt"
if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    CUDA=1
    unset TRITON_INTERPRET
    say "CUDA present: Triton tests compile for the GPU; benchmarks time the GPU"
else
    CUDA=0
    export TRITON_INTERPRET=1
    say "no CUDA GPU: SKIPPED the compiled Triton kernels; the Triton tests run under the interpreter" \
        "(TRITON_INTERPRET=1)"
fi

step build "${BUILD_LIMIT:-120}" "$PY" -m margreg_fast build-native
step tests_ops "${TEST_LIMIT:-180}" "$PY" -m pytest -q -rs tests/ops --junitxml="$OUT/tests_ops.xml"
grep -E "SKIPPED|passed|failed" "$OUT/tests_ops.log" | tail -n 8 | sed 's/^/    /' | tee -a "$OUT/summary.txt"
# The matrix of wrappers x precisions x models x estimators (tests/matrix): its 1-process cells on the GPU
# (the 2-process kinds run gloo on CPU in `make test`: two ranks cannot share one GPU under NCCL).
if [ $CUDA -eq 1 ]; then
    step tests_matrix "${TEST_LIMIT:-180}" env MARGREG_MATRIX_DEVICE=cuda "$PY" -m pytest -q -rs tests/matrix -k single \
        --junitxml="$OUT/tests_matrix.xml"
    grep -E "passed|failed" "$OUT/tests_matrix.log" | tail -n 4 | sed 's/^/    /' | tee -a "$OUT/summary.txt"
else
    say "no CUDA GPU: SKIPPED the matrix test on CUDA (make test runs it on CPU)"
fi

# Training step: every method in eager mode (with peak memory); under torch.compile only plain and fd
# (each compiled method costs a compilation).
if [ $CUDA -eq 1 ]; then
    DEVICE=cuda HEAD_ARGS="--repeats 10" STEP_ARGS="--rounds 5"
else
    DEVICE=cpu HEAD_ARGS="--repeats 2" STEP_ARGS="--rounds 1 --warmup 1 --models cnn"
    say "no CUDA GPU: SKIPPED the CUDA timings; the benchmarks run once on CPU with short settings"
fi
step bench_head "${BENCH_LIMIT:-90}" "$PY" benchmarks/bench_head.py --device $DEVICE $HEAD_ARGS --out "$OUT"
step bench_train_step_eager "${BENCH_LIMIT:-90}" "$PY" benchmarks/bench_train_step.py --device $DEVICE $STEP_ARGS \
    --modes eager --out "$OUT/eager"
step bench_train_step_compile "${BENCH_LIMIT:-90}" "$PY" benchmarks/bench_train_step.py --device $DEVICE $STEP_ARGS \
    --modes compile --methods fd --no-memory --out "$OUT/compile"
[ $FAILED -eq 0 ] && say "all steps passed; outputs in $OUT" || say "some steps FAILED; outputs in $OUT"
exit $FAILED
