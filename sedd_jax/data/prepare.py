r"""Prepare (download + tokenize + cache) datasets once, before training: required for openwebtext.

    python -m sedd_jax.data.prepare --config=owt_small --workdir=/tmp/run \
        [--split=train] [--dataset=openwebtext]            # or: sedd-prepare ...

Writes the tokenized cache that `data.create_datasets` reads (see datasets.tokenized_prefix), by
default for the train split of `config.data.train` and the eval split of `config.data.valid`.
For openwebtext the text comes through TFDS's `huggingface:openwebtext` builder (needs
`pip install datasets` and the network) into `config.data.cache_dir`, and the tokens (GPT-2, uint16,
EOS after each document) go to `<cache_dir>/sedd_jax_tokenized/`. Run it on one machine, then make
that directory available to every host (copy to local disk or use a shared filesystem); the
tokens are memory-mapped, so each host only pages in the blocks of its own shard. Disk: see
docs/data.md.
"""
from __future__ import annotations

import sys
import time

from absl import flags
from ml_collections import config_flags

from sedd_jax.configs import command_line
from sedd_jax.data import datasets, packing, sources

_CONFIG = config_flags.DEFINE_config_file("config", None, command_line.CONFIG_HELP, lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "workdir (holds the SentencePiece model, if any)")
_DATASET = flags.DEFINE_string("dataset", None, "prepare only this dataset (default: data.train "
                               "and data.valid)")
_SPLIT = flags.DEFINE_string("split", None, "prepare only this split")


def prepare(config, workdir, dataset=None, split=None) -> list:
    """Tokenizes and caches the requested (dataset, split) pairs; returns their cache prefixes."""
    if dataset:
        pairs = [(dataset, s) for s in ([split] if split else sources.get_spec(dataset).splits)]
    else:
        pairs = [(config.data.train, "train"),
                 (config.data.valid, sources.get_spec(config.data.valid).eval_split)]
        if split:
            pairs = [p for p in pairs if p[1] == split]
    tok = datasets.get_tokenizer(config, workdir)
    prefixes = []
    for name, part in pairs:
        prefix = datasets.tokenized_prefix(config, workdir, name, part, tok)
        corpus = packing.load_tokenized(prefix)
        if corpus is None:
            start = time.time()
            print(f"preparing {name}/{part} -> {prefix}", flush=True)
            corpus = packing.write_tokenized(sources.load_documents(name, part, config), tok, prefix,
                                             meta=dict(dataset=name, split=part, tokenizer=tok.name),
                                             log_every=100_000,
                                             space_hint=datasets.cache_space_hint(tok))
            print(f"  done in {time.time() - start:.0f}s", flush=True)
        print(f"{name}/{part}: {corpus.num_documents} documents, {corpus.num_tokens} tokens "
              f"({corpus.tokens.nbytes / 1e9:.2f} GB) at {prefix}", flush=True)
        prefixes.append(prefix)
    return prefixes


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}; the flags are --config, --workdir, --dataset, --split")
    prepare(_CONFIG.value, _WORKDIR.value, _DATASET.value, _SPLIT.value)


def run():
    """Console script `sedd-prepare`; expected failures are one `error: ...` line."""
    flags.mark_flags_as_required(["config"])
    command_line.run(main, sys.modules[__name__], "sedd-prepare")


if __name__ == "__main__":
    run()
