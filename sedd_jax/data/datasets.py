"""create_datasets / get_tokenizer: config -> tokenizer + endless per-process batch iterators.

Flow per split: sources.load_documents (detokenized text) -> tokenizer (+EOS per document) ->
tokenized cache (memory-mapped, built once) -> packing.pack (blocks [N, L]) -> pipeline (grain:
shuffle per epoch, shard by process, batch) -> DatasetIterator of int32 [B_local, L].

Tokenized caches (reused across runs; each is <prefix>.tokens.bin/.offsets.bin/.json):
  sentencepiece: <workdir>/data_cache/<dataset>.<split>.sp<V>-<fingerprint>   (tied to the workdir's model)
  gpt2 / char:   <cache_dir>/sedd_jax_tokenized/<dataset>.<split>.<tokenizer>-<fingerprint>
The fingerprint hashes the paths, sizes and mtimes of local corpora, so an edited corpus is
re-tokenized. openwebtext is never tokenized at startup: `python -m sedd_jax.data.prepare` writes its
cache once (see docs/data.md).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Optional, Tuple

from sedd_jax import files
from sedd_jax.data import packing, pipeline, sources, tokenizers


@dataclasses.dataclass
class DataBundle:
    """What the trainer consumes.

    tokenizer:   encode/decode, vocab_size, eos_id
    train_iter:  endless grain DatasetIterator of int32 [training.batch_size // process_count, L]
    eval_iter:   endless grain DatasetIterator of int32 [eval.batch_size // process_count, L]
    train_blocks / eval_blocks: number of packed blocks of length L in each split (whole corpus)
    """
    tokenizer: Any
    train_iter: Any
    eval_iter: Any
    train_blocks: int = 0
    eval_blocks: int = 0


def _cache_dir(config) -> str:
    return os.path.expanduser(config.data.get("cache_dir", None) or "~/tensorflow_datasets")


def _train_texts(config):
    return lambda: sources.load_documents(config.data.train, "train", config)


def get_tokenizer(config, workdir: Optional[str] = None) -> tokenizers.Tokenizer:
    """The tokenizer of `config.data.tokenizer`, checked against `config.tokens`.

    SentencePiece: loaded from <workdir>/tokenizer/sp.model, or trained there on the train corpus of
    `config.data.train` (a bounded sample) when missing.
    """
    kind = config.data.tokenizer
    for name in (config.data.train, config.data.valid):
        spec = sources.get_spec(name)
        if spec.tokenizer and spec.tokenizer != kind:
            raise ValueError(f"dataset {name!r} needs --config.data.tokenizer={spec.tokenizer} "
                             f"(got {kind!r})")
    tok = tokenizers.build_tokenizer(
        kind, workdir=os.path.expanduser(workdir) if workdir else None,
        cache_dir=_cache_dir(config), sp_vocab_size=config.data.get("sp_vocab_size", None),
        train_texts=_train_texts(config))
    tokenizers.check_vocab(tok, int(config.tokens))
    return tok


def tokenized_prefix(config, workdir: Optional[str], name: str, split: str,
                     tok: tokenizers.Tokenizer) -> str:
    """Where the tokenized cache of (dataset, split) lives for this tokenizer."""
    fp = sources.corpus_fingerprint(name, config)
    if isinstance(tok, tokenizers.SentencePieceTokenizer):
        return os.path.join(os.path.expanduser(workdir), "data_cache",
                            f"{name}.{split}.sp{tok.vocab_size}-{fp}")
    return os.path.join(_cache_dir(config), "sedd_jax_tokenized", f"{name}.{split}.{tok.name}-{fp}")


def cache_space_hint(tok: tokenizers.Tokenizer) -> str:
    """What to do when the tokenized cache of `tokenized_prefix` does not fit on its disk."""
    if isinstance(tok, tokenizers.SentencePieceTokenizer):
        return files.WORKDIR_SPACE_HINT
    return files.DEFAULT_SPACE_HINT


def load_corpus(config, workdir: Optional[str], name: str, split: str,
                tok: tokenizers.Tokenizer) -> packing.TokenizedCorpus:
    """The tokenized (dataset, split): from its cache, else tokenized now and cached."""
    spec = sources.get_spec(name)
    if split not in spec.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; it has {spec.splits}")
    prefix = tokenized_prefix(config, workdir, name, split, tok)
    corpus = packing.load_tokenized(prefix)
    if corpus is not None:
        return corpus
    if spec.needs_prepare:
        raise sources.DatasetUnavailableError(
            f"{name} ({split}) has not been prepared: no {prefix}.json. Prepare it once (downloads "
            f"and tokenizes; see docs/data.md for the disk it needs), with the same config:\n"
            f"  python -m sedd_jax.data.prepare --config=<your config> --workdir=<workdir> "
            f"--split={split}\nthen make {os.path.dirname(prefix)} available on every host.")
    start = time.time()
    corpus = packing.write_tokenized(sources.load_documents(name, split, config), tok, prefix,
                                     meta=dict(dataset=name, split=split, tokenizer=tok.name),
                                     space_hint=cache_space_hint(tok))
    logging.info("tokenized %s/%s: %d documents, %d tokens in %.1fs -> %s", name, split,
                 corpus.num_documents, corpus.num_tokens, time.time() - start, prefix)
    return corpus


def load_blocks(config, workdir: Optional[str], name: str, split: str,
                tok: tokenizers.Tokenizer, bos_eos: Optional[Tuple[int, int]] = None):
    """Packed blocks [N, config.model.length] of (dataset, split); `bos_eos`: MDLM's wrap (`packing.pack`)."""
    corpus = load_corpus(config, workdir, name, split, tok)
    spec = sources.get_spec(name)
    seed = config.data.get("seed", None)
    seed = int(config.training.seed if seed is None else seed)
    return packing.pack(corpus, int(config.model.length),
                        seed=seed if spec.shuffle_documents else None,
                        what=f"dataset {name!r} split {split!r}", bos_eos=bos_eos)


def _local_batch(global_batch: int, process_count: int, field: str) -> int:
    if global_batch % process_count:
        raise ValueError(f"{field}={global_batch} is not divisible by the {process_count} processes")
    return global_batch // process_count


def create_datasets(config, workdir: Optional[str], process_index: Optional[int] = None,
                    process_count: Optional[int] = None) -> DataBundle:
    """Tokenizer and endless train/eval iterators for this process.

    process_index / process_count default to jax.process_index() / jax.process_count(). The train
    split of `config.data.train` and the eval split (sources.DATASETS[name].eval_split) of
    `config.data.valid` are packed into blocks of `config.model.length`; both iterators reshuffle
    every epoch with seed `config.training.seed + epoch` (eval: the same seed + 1 offset).
    For one deterministic pass over a split (e.g. a final perplexity), use
    `load_blocks(config, workdir, name, split, tokenizer)` instead of the endless eval_iter.

    Multi-host: every process builds the same caches (atomic writes, so a shared workdir is safe, and
    SentencePiece training is deterministic); the workdir must be a local or mounted path here.
    """
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    sources.get_spec(config.data.train)
    valid_spec = sources.get_spec(config.data.valid)
    train_batch = _local_batch(int(config.training.batch_size), process_count,
                               "config.training.batch_size")
    eval_batch = _local_batch(int(config.eval.batch_size), process_count, "config.eval.batch_size")
    tok = get_tokenizer(config, workdir)
    train_blocks = load_blocks(config, workdir, config.data.train, "train", tok)
    eval_blocks = load_blocks(config, workdir, config.data.valid, valid_spec.eval_split, tok)
    seed = int(config.training.seed)
    workers = int(config.data.get("num_workers", 0) or 0)
    common = dict(process_index=process_index, process_count=process_count, num_workers=workers)
    return DataBundle(
        tokenizer=tok,
        train_iter=pipeline.make_iterator(train_blocks, batch_size=train_batch, seed=seed,
                                          what="train", **common),
        eval_iter=pipeline.make_iterator(eval_blocks, batch_size=eval_batch, seed=seed + 1,
                                         what="eval", **common),
        train_blocks=len(train_blocks), eval_blocks=len(eval_blocks))
