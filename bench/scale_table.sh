#!/usr/bin/env bash
# Regenerates docs/scale.md's table: `python -m sedd_jax.compile --format=markdown` for each case below
# (libtpu's compiler on this machine; no TPU needed). Needs the [tpu] extra. About 15 minutes on 2 cores.
#
#   bash bench/scale_table.sh > /tmp/rows.md     # then paste the rows into docs/scale.md
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
cases=(
  "configs/owt_small.py v5e:4x4"
  "configs/owt_small.py v5e:4x4 --config.training.accum=2"
  "configs/owt_small.py v5e:4x4 --config.training.accum=4"
  "configs/owt_small.py v5e:4x4 --config.training.accum=4 --config.mesh.data=4 --config.mesh.fsdp=4"
  "configs/owt_small.py v5e:4x4 --config.training.accum=8 --config.mesh.data=4 --config.mesh.fsdp=4"
  "configs/owt_small.py v5e:4x4 --config.training.accum=8 --config.mesh.data=2 --config.mesh.fsdp=4 --config.mesh.tensor=2"
  "configs/owt_small.py v5p:2x2x2"
  "configs/owt_small.py v5p:2x2x2 --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2"
  "configs/owt_medium.py v5p:2x2x4"
  "configs/owt_medium.py v5p:2x2x4 --config.mesh.data=4 --config.mesh.fsdp=2 --config.mesh.tensor=2"
  "configs/owt_medium.py v5e:8x8 --config.training.accum=4 --config.mesh.data=16 --config.mesh.fsdp=4"
)
python - <<'PY'
from sedd_jax.compile import MARKDOWN_HEADER
print(MARKDOWN_HEADER)
PY
for case in "${cases[@]}"; do
  read -r config topology overrides <<<"$case"
  # shellcheck disable=SC2086  # the overrides are separate flags
  python -m sedd_jax.compile --config="$config" --topology="$topology" --format=markdown $overrides 2>/dev/null
done
