#!/usr/bin/env bash
# The two shortcuts (the robust class-coded 2x2 square, the non-robust class-coded texture), end to end:
# each task's weights chosen on its own validation split (`margreg-fast select spurious`, the claims' rule),
# then none / igr / joint / mdr on both tasks at those weights and their frontier over GRID, alone
# (`claims --shortcuts-only`), then the tables and figure copied into DEST (docs/results/shortcuts by default).
# Resumable: run it again with the same OUT to finish an interrupted run.
# Usage: scripts/shortcuts.sh OUT [extra options for every command, e.g. --max-train 2000 --epochs 8]
# Environment: SEEDS (claims and frontier seeds, default "0 1 2 3 4"; commas or spaces), SELECT_SEEDS
# (default "0"), GRID (default "0.1 1 10"; commas or spaces), JOBS (default 2), DEST (default docs/results/shortcuts), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/shortcuts.sh OUT [extra options]}
shift
py=${PYTHON:-.venv/bin/python}
seeds=${SEEDS:-0 1 2 3 4}
seeds=${seeds//,/ }
grid=${GRID:-0.1 1 10}
grid=${grid//,/ }
jobs=${JOBS:-2}
dest=${DEST:-docs/results/shortcuts}
for task in spurious:overlay texture:texture; do
    name=${task%%:*} patch=${task##*:}
    # shellcheck disable=SC2086
    "$py" -m margreg_fast select spurious --spurious-patch "$patch" --grid $grid --seeds ${SELECT_SEEDS:-0} \
        --threads 1 --jobs "$jobs" --quiet --out "$out/select-$name" --write "$out/weights-$name.json" "$@"
done
# shellcheck disable=SC2086
"$py" -m margreg_fast claims --shortcuts-only --texture --shortcut-frontier --seeds $seeds --frontier-seeds $seeds \
    --grid $grid --shortcut-weights-file "spurious=$out/weights-spurious.json" "texture=$out/weights-texture.json" \
    --threads 1 --jobs "$jobs" --quiet --out "$out/claims" "$@" > /dev/null
mkdir -p "$dest" docs/figures
for name in spurious texture; do cp "$out/select-$name/selection.md" "$dest/selection_$name.md"; done
for f in claims_table.md claims_seeds.md shortcut_frontier.md compute.md claims.json; do cp "$out/claims/$f" "$dest/$f"; done
cp "$out/claims/figures/shortcut_frontier.png" docs/figures/shortcut_frontier.png
echo "published $out into $dest and docs/figures/shortcut_frontier.png"
