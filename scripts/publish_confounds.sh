#!/usr/bin/env bash
# Copy the confound rows of a `margreg-fast claims --scale-free --budgets` output directory into docs/:
# docs/results/confounds/{scale_free,budgets}.md and docs/figures/confounds_budgets.png, which
# docs/findings/confounds.md includes. Each file's first line names its seeds and evaluation images.
# Usage: scripts/publish_confounds.sh CLAIMS_OUT       (scripts/publish_claims.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: scripts/publish_confounds.sh CLAIMS_OUT}
mkdir -p docs/results/confounds docs/figures
for f in scale_free.md budgets.md; do
    cp "$src/$f" "docs/results/confounds/$f"
done
cp "$src/figures/budgets.png" docs/figures/confounds_budgets.png
echo "published the confound rows of $src into docs/results/confounds/ and docs/figures/confounds_budgets.png"
