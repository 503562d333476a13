#!/usr/bin/env bash
# Copy one second setting's weight selection and claims (`make claims-resnet`, `make claims-animal`) into
# docs/results/second_setting/ as NAME_selection.md, NAME_claims_table.md, NAME_claims_seeds.md,
# NAME_compute.md and NAME_claims.json (the claims table holds the scale-free rows).
# Usage: scripts/publish_second_setting.sh NAME SELECT_OUT CLAIMS_OUT
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/publish_second_setting.sh NAME SELECT_OUT CLAIMS_OUT}
select_out=${2:?usage: scripts/publish_second_setting.sh NAME SELECT_OUT CLAIMS_OUT}
claims_out=${3:?usage: scripts/publish_second_setting.sh NAME SELECT_OUT CLAIMS_OUT}
dst=docs/results/second_setting
mkdir -p "$dst"
cp "$select_out/selection.md" "$dst/${name}_selection.md"
for f in claims_table.md claims_seeds.md compute.md claims.json; do
    cp "$claims_out/$f" "$dst/${name}_$f"
done
echo "published $select_out and $claims_out into $dst/${name}_*"
