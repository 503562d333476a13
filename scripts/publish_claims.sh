#!/usr/bin/env bash
# Copy the outputs of `margreg-fast claims` (and of its rerun under another thread count) into docs/:
# docs/results/claims/ (tables, claims.json, the BlockMNIST per-scheme files) and docs/figures/claims_*.png.
# Usage: scripts/publish_claims.sh CLAIMS_OUT [RERUN_OUT [GELU_OUT]]     (`make claims` runs it)
# RERUN_OUT: the rerun under another thread count (its stability.md and compute.md, as *_threads2.md);
# GELU_OUT: the estimator comparison on the GELU model (its estimator.md and compute.md, as *_gelu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: scripts/publish_claims.sh CLAIMS_OUT [RERUN_OUT [GELU_OUT]]}
dst=docs/results/claims
mkdir -p "$dst" docs/figures
for f in claims.md claims.json claims_table.md claims_seeds.md figure1.md attribution_robustness.md cheaper.md estimator.md frontier.md compute.md; do
    if [ -f "$src/$f" ]; then cp "$src/$f" "$dst/$f"; fi
done
cp "$src/blockmnist/results.md" "$dst/blockmnist.md"
cp "$src/blockmnist/results.json" "$dst/blockmnist.json"
cp "$src/blockmnist/results_seeds.json" "$dst/blockmnist_seeds.json"
for f in figure1 attributions insertion; do
    cp "$src/blockmnist/figures/$f.png" "docs/figures/claims_$f.png"
done
if [ -f "$src/figures/frontier.png" ]; then cp "$src/figures/frontier.png" docs/figures/claims_frontier.png; fi
# the confound rows (claims --scale-free --budgets), if this claims run has them
if [ -f "$src/scale_free.md" ] || [ -f "$src/budgets.md" ]; then scripts/publish_confounds.sh "$src"; fi
if [ -n "${2:-}" ] && [ -f "$2/stability.md" ]; then cp "$2/stability.md" "$dst/stability_threads2.md"; fi
if [ -n "${2:-}" ] && [ -f "$2/compute.md" ]; then cp "$2/compute.md" "$dst/compute_threads2.md"; fi
if [ -n "${3:-}" ] && [ -f "$3/estimator.md" ]; then cp "$3/estimator.md" "$dst/estimator_gelu.md"; fi
if [ -n "${3:-}" ] && [ -f "$3/compute.md" ]; then cp "$3/compute.md" "$dst/compute_gelu.md"; fi
# the cost-against-leakage table and figure pair these claims with the benchmarked step costs
if [ -f benchmarks/results/train_step_claims.csv ]; then "${PYTHON:-.venv/bin/python}" benchmarks/cost_leakage.py; fi
# the README's claims table is generated from claims.json
"${PYTHON:-.venv/bin/python}" benchmarks/readme_tables.py
echo "published $src into $dst and docs/figures/claims_*.png"
