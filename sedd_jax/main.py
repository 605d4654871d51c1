"""Train a SEDD model: `python -m sedd_jax.main --config=tiny --workdir=runs/tiny` (or `sedd-train ...`).

--config names a shipped config (tiny, owt_small, owt_medium, text8: `sedd_jax/configs/`) or a config file
(`--config=configs/tiny.py`, or your own .py with a `get_config()`).

Run the same command on every host of a TPU pod (the hosts find each other). Elsewhere, join several
processes explicitly: `--coordinator_address=HOST0:PORT --num_processes=N --process_id=I` (I = 0 on HOST0).
`--config.<field>=value` overrides any config field (e.g. `--config.training.n_iters=300`). Rerunning in the
same workdir resumes from its latest checkpoint, and loads the compiled train step from the compilation cache
(`--compilation_cache`, on by default) instead of compiling it again.
The logic lives in `sedd_jax.train.train_and_evaluate(config, workdir)`, callable from a notebook.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from sedd_jax import compilation_cache, host_memory
from sedd_jax.configs import command_line

config_flags.DEFINE_config_file("config", None, command_line.CONFIG_HELP, lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples (resumed if it has a run).")
flags.DEFINE_bool("distributed", None, "Join the processes of a multi-host run with jax.distributed (default: "
                  "when a TPU pod slice or SLURM job is detected, or --coordinator_address is given).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs that are not "
                    "detected automatically (with --num_processes and --process_id).")
flags.DEFINE_integer("num_processes", None, "Number of processes of the run (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes) (0 runs the coordinator).")
flags.DEFINE_string("compilation_cache", None, compilation_cache.FLAG_HELP[0].upper() + compilation_cache.FLAG_HELP[1:]
                    + ".")
flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds after which the other processes stop with an error when "
                     "one of them stops responding.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    """Expected failures (bad config or data, a full disk, divergence, a missing extra) reach `cli.report_errors`:
    one `error:` line, exit status 1 (the traceback with --verbose)."""
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}: flags are --name=value")
    logging.set_verbosity(logging.WARNING)  # orbax and grain are chatty at INFO; progress is printed
    from sedd_jax import parallel, train

    try:
        host_memory.run_cpu_programs_inline()  # before JAX starts: CPU steps then reuse their memory
        compilation_cache.enable(FLAGS.compilation_cache)
        parallel.initialize_processes(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                      FLAGS.distributed, FLAGS.heartbeat_timeout)
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); rerun the same command to resume from the newest checkpoint", file=sys.stderr)
        sys.exit(130)


def run():
    """Console script `sedd-train`."""
    command_line.run(main, sys.modules[__name__], "sedd-train")


if __name__ == "__main__":
    run()
