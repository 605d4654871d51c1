#!/usr/bin/env bash
# Train on every host of a Cloud TPU VM pod slice with one command (the same command runs on all hosts;
# sedd_jax.main calls jax.distributed.initialize() when it detects several hosts).
#
#   bash launch/tpu_pod.sh TPU_NAME ZONE gs://BUCKET/runs/owt_small [extra --config.* flags]
#
# First run installs sedd-jax on every host (from this checkout's origin). Rerunning the same command after a
# preemption resumes from the workdir's latest checkpoint. OpenWebText must be prepared once beforehand
# (python -m sedd_jax.data.prepare, see docs/data.md) into a path every host can read (config.data.cache_dir).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
tpu=$1; zone=$2; workdir=$3; shift 3
repo=$(git config --get remote.origin.url || true)
if [ -z "$repo" ]; then
  echo "error: this checkout has no origin remote; push it somewhere the TPU hosts can clone from" >&2
  exit 2
fi
config=${CONFIG:-configs/owt_small.py}
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  if [ ! -d sedd-jax ]; then git clone $repo sedd-jax; fi
  cd sedd-jax && git pull --ff-only
  python3 -m pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  python3 -m sedd_jax.main --config=$config --workdir=$workdir$extra
"
