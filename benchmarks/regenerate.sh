#!/usr/bin/env bash
# Rerun every benchmark the documentation shows, write benchmarks/results/*.{csv,md} (each .md names the
# command that produced it); the site's results pages include those files when it is built (make docs).
# About 30-45 minutes on 2 CPU cores.
# Usage: benchmarks/regenerate.sh [PYTHON]   (default: .venv/bin/python; `make results` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
export PYTHONPATH=$PWD
"$PY" benchmarks/bench_head.py                      # head_cpu: torch's threads, malloc pinned
"$PY" benchmarks/bench_head.py --threads 1          # head_cpu_1thread
"$PY" benchmarks/bench_head.py --no-pin-malloc      # head_cpu_nopin: glibc's default malloc
"$PY" benchmarks/bench_train_step.py --rounds 15    # train_step
"$PY" benchmarks/bench_train_step.py --models resnet18 convnext_atto --modes eager --methods floor exact rfd \
    --rounds 10 --name train_step_timm              # train_step_timm: real timm models, 3x224x224, batch 8
"$PY" benchmarks/bench_train_step.py --models resnet --modes eager \
    --methods plain floor rfd floor@0.5 rfd@0.5 floor@0.25 rfd@0.25 floor@0.125 rfd@0.125 \
    --rounds 20 --name train_step_bn              # train_step_bn: the BatchNorm ResNet's fractions, more rounds
"$PY" benchmarks/bench_train_step.py --models papercnn --modes eager \
    --methods plain floor rfd floor@0.5 rfd@0.5 floor@0.25 rfd@0.25 floor@0.125 rfd@0.125 floor%4 rfd%4 floor%8 rfd%8 \
    --rounds 30 --name train_step_claims          # train_step_claims: the claims' model, the cost axis of cost_leakage
"$PY" benchmarks/cost_leakage.py                   # cost_leakage: those costs against the committed claims
"$PY" benchmarks/estimator_training.py              # estimator_training: the outcome of training per estimator
"$PY" benchmarks/estimator_agreement.py             # estimator_agreement: parameter-gradient cosines with exact
"$PY" benchmarks/estimator_agreement.py --sweep --kinds relu-max gelu-avg bn-silu --methods fd central rfd
