"""Convert an official SEDD checkpoint to a sedd-jax checkpoint that loads without torch.

    python -m sedd_jax.convert --checkpoint=SRC --output=DIR

SRC is an official-format directory (config.json + pytorch_model.bin or model.safetensors, e.g. a local
download of louaaron/sedd-small). DIR receives config.json and an orbax checkpoint under params/;
`sedd_jax.pretrained.load(DIR)` reads it. DIR must be new or empty: nothing is overwritten, and a failed
conversion leaves no partial DIR. The .bin is read by a restricted unpickler (no torch, no code execution).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

flags.DEFINE_string("checkpoint", None, "Official-format checkpoint directory (config.json + weights).")
flags.DEFINE_string("output", None, "New directory for the converted checkpoint.")
FLAGS = flags.FLAGS


def convert(checkpoint: str, output: str) -> None:
    import os

    from sedd_jax import converted, official

    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"{output} exists and is not an empty directory; choose a new --output directory")
    config, params = official.read_official(checkpoint)
    converted.save(output, config, params)
    count = sum(p.size for p in __import__("jax").tree.leaves(params))
    print(f"converted {checkpoint} -> {output}: graph={config.graph.type} noise={config.noise.type} "
          f"tokens={config.tokens} parameters={count:,}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.checkpoint or not FLAGS.output:
        raise app.UsageError("both --checkpoint=SRC and --output=DIR are required")
    logging.set_verbosity(logging.WARNING)
    try:
        convert(FLAGS.checkpoint, FLAGS.output)
    except (ValueError, OSError) as e:  # FileNotFoundError, FileExistsError, bad checkpoint files
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
