"""Convert an official SEDD checkpoint to a sedd-jax checkpoint that loads without torch.

    python -m sedd_jax.convert --checkpoint=SRC --output=DIR          # or: sedd-convert ...

SRC (alias --model_path) is an official-format directory (config.json + pytorch_model.bin or model.safetensors,
e.g. `huggingface-cli download louaaron/sedd-small --local-dir sedd-small`). DIR receives config.json and an
orbax checkpoint under params/; `sedd_jax.pretrained.load(DIR)` and `sedd-sample --checkpoint=DIR` read it. DIR
must be new or empty: nothing is overwritten, and a failed conversion leaves no partial DIR. The .bin is read by
a restricted unpickler (no torch, no code execution). Converting is optional: sedd-jax reads official
directories too, and a sedd-jax training workdir or converted directory needs no conversion.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from sedd_jax import cli

flags.DEFINE_string("checkpoint", None, "Official-format checkpoint directory (config.json + weights).")
flags.DEFINE_alias("model_path", "checkpoint")
flags.DEFINE_string("output", None, "New directory for the converted checkpoint.")
flags.mark_flags_as_required(["checkpoint", "output"])
FLAGS = flags.FLAGS


def check_source(checkpoint: str) -> None:
    """Raises FileNotFoundError or ValueError, saying what `checkpoint` is and what to do, when it is not an
    official-format directory (missing, a training workdir, already converted, or without config.json)."""
    from sedd_jax import converted, official, pretrained

    path = os.path.expanduser(checkpoint)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {checkpoint!r} does not exist (an official checkpoint is "
                                "fetched with e.g. `huggingface-cli download louaaron/sedd-small --local-dir "
                                "sedd-small`)")
    reads_directly = (f"`sedd-sample --checkpoint={checkpoint}` and `sedd_jax.pretrained.load({checkpoint!r})` read "
                      "it directly; no conversion needed")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        raise ValueError(f"{checkpoint} is a sedd-jax training workdir (it has checkpoints/), so it is already a "
                         f"sedd-jax checkpoint: {reads_directly}")
    if not os.path.isfile(os.path.join(path, official.CONFIG_FILE)):
        raise FileNotFoundError(f"{checkpoint} is not an official SEDD checkpoint: expected {official.CONFIG_FILE} "
                                f"with {official.TORCH_WEIGHTS} or {official.SAFETENSORS_WEIGHTS}; found: "
                                f"{pretrained._describe_contents(path)}")
    if converted.is_converted(path):
        raise ValueError(f"{checkpoint} was written by sedd_jax.convert, so it is already a sedd-jax checkpoint: "
                         f"{reads_directly}")


def convert(checkpoint: str, output: str) -> None:
    """Reads the official checkpoint `checkpoint` and writes it to the new directory `output`
    (`sedd_jax.converted`); prints a summary line."""
    import jax

    from sedd_jax import converted, official

    check_source(checkpoint)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"{output} exists and is not an empty directory; choose a new --output directory")
    config, params = official.read_official(os.path.expanduser(checkpoint))
    converted.save(output, config, params)
    count = sum(p.size for p in jax.tree.leaves(params))
    print(f"converted {checkpoint} -> {output}: graph={config.graph.type} noise={config.noise.type} "
          f"tokens={config.tokens} parameters={count:,}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; the flags are --checkpoint=SRC --output=DIR")
    logging.set_verbosity(logging.WARNING)
    convert(FLAGS.checkpoint, FLAGS.output)


def run() -> None:
    """Console script `sedd-convert` (and `python -m sedd_jax.convert`)."""
    cli.run_absl(main, sys.modules[__name__], "sedd-convert")


if __name__ == "__main__":
    run()
