#!/usr/bin/env bash
# Regenerates docs/scale.md's tables: `python -m sedd_jax.compile --format=markdown` for each case below, on this
# machine, without the hardware: the TPU table with libtpu's compiler (the [tpu] extra; about 15 minutes on 2
# cores), the GPU table with XLA's GPU compiler (`bash bench/scale_table.sh gpu`; JAX's CUDA plugin,
# `pip install -U "jax[cuda12]"`; about 10 minutes).
#
#   bash bench/scale_table.sh [tpu|gpu] > /tmp/rows.md     # then paste the rows into docs/scale.md
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
tpu_cases=(
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
gpu_cases=(
  "configs/owt_small.py a100:8"
  "configs/owt_small.py h100:8"
  "configs/owt_small.py h200:8"
  "configs/owt_medium.py a100:8"
  "configs/owt_medium.py h100:8"
  "configs/owt_medium.py h200:8 --config.training.accum=1"
)
case "${1:-tpu}" in
  tpu) cases=("${tpu_cases[@]}") ;;
  gpu) cases=("${gpu_cases[@]}") ;;
  *) echo "usage: bash bench/scale_table.sh [tpu|gpu]" >&2; exit 2 ;;
esac
python - <<'PY'
from sedd_jax.compile import MARKDOWN_HEADER
print(MARKDOWN_HEADER)
PY
for case in "${cases[@]}"; do
  read -r config topology overrides <<<"$case"
  # shellcheck disable=SC2086  # the overrides are separate flags
  python -m sedd_jax.compile --config="$config" --topology="$topology" --format=markdown $overrides 2>/dev/null
done
