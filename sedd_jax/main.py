"""Train a SEDD model: `python -m sedd_jax.main --config=configs/tiny.py --workdir=runs/tiny`.

Run the same command on every host of a TPU pod. `--config.<field>=value` overrides any config field
(e.g. `--config.training.n_iters=300`). Rerunning in the same workdir resumes from its latest checkpoint.
The logic lives in `sedd_jax.train.train_and_evaluate(config, workdir)`, callable from a notebook.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Training config file (e.g. configs/tiny.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples (resumed if it has a run).")
flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when several hosts are "
                  "detected, e.g. on a TPU pod slice).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _multi_host_environment() -> bool:
    return any(v in os.environ for v in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                                         "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and grain are chatty at INFO; progress is printed
    import jax

    distributed = FLAGS.distributed if FLAGS.distributed is not None else _multi_host_environment()
    if distributed:
        jax.distributed.initialize()
    from sedd_jax import train

    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
