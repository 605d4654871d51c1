"""Tokenized corpora and packing ("wrap", reference §6.3).

A tokenized corpus is a flat token stream with one EOS after every document plus document offsets:

  tokens  [T]     uint16 (vocabularies <= 65536) or int32; document d is tokens[offsets[d]:offsets[d+1]]
  offsets [D + 1] int64, offsets[0] = 0, offsets[-1] = T

It is written once (streaming, so corpora larger than memory work) as `<prefix>.tokens.bin`,
`<prefix>.offsets.bin` and `<prefix>.json` (written last: its presence marks a complete cache) and
read back memory-mapped.

Packing concatenates the documents (in stored order, or in a seeded permutation) and cuts the stream
into consecutive blocks of exactly `length` tokens: blocks [N, length], N = T // length. Blocks start
anywhere (mid-document) and hold several EOS-separated documents, as in the reference; there is no
padding and no attention mask. Remainder policy: the last T mod length (< length) tokens of the
(permuted) stream are dropped, once per split. (The reference drops a remainder per 1000-document
map batch; dropping once loses less data.)

`pack(..., bos_eos=(bos, eos))` is MDLM's "wrap" instead (kuleshov-group/mdlm `dataloader._group_texts`,
used by `python -m sedd_jax.evaluate --protocol=mdlm`): the same EOS-separated stream is cut into
chunks of `length - 2` tokens and every block is [bos] + chunk + [eos], so each block starts with BOS
and ends with EOS whatever document it cuts. N = T // (length - 2); the remainder is dropped once.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Optional, Tuple

import numpy as np

from sedd_jax import files

CACHE_FORMAT = 1


@dataclasses.dataclass
class TokenizedCorpus:
    tokens: np.ndarray   # [T] uint16 | int32
    offsets: np.ndarray  # [D + 1] int64

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(len(self.tokens))


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def _encode_chunk(tokenizer, docs):
    if hasattr(tokenizer, "encode_array"):  # text8: one long document, vectorised
        return [tokenizer.encode_array(d) for d in docs]
    return tokenizer.encode_batch(docs)


def _chunks(docs: Iterable[str], size: int):
    chunk = []
    for d in docs:
        chunk.append(d)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def tokenize_documents(docs: Iterable[str], tokenizer, chunk_size: int = 1024) -> TokenizedCorpus:
    """Tokenizes documents in memory, appending EOS after each one."""
    dtype = token_dtype(tokenizer.vocab_size)
    parts, lengths = [], []
    for chunk in _chunks(docs, chunk_size):
        for ids in _encode_chunk(tokenizer, chunk):
            arr = np.empty(len(ids) + 1, dtype)
            arr[:-1] = ids
            arr[-1] = tokenizer.eos_id
            parts.append(arr)
            lengths.append(len(arr))
    tokens = np.concatenate(parts) if parts else np.zeros((0,), dtype)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenizedCorpus(tokens, offsets)


def write_tokenized(docs: Iterable[str], tokenizer, prefix: str, chunk_size: int = 1024,
                    meta: Optional[dict] = None, log_every: int = 0,
                    space_hint: Optional[str] = None) -> TokenizedCorpus:
    """Tokenizes documents (+EOS each) streaming into `prefix.*`; returns the memory-mapped corpus.

    Atomic (`files.atomic_write`): an error or interrupt leaves no partial or temporary files, and a full
    disk raises `files.DiskFullError` (one line; `space_hint` says what to do, default: free space or
    move --config.data.cache_dir).
    """
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    n_tokens, n_docs = 0, 0
    with files.atomic_write(prefix + ".tokens.bin", prefix + ".offsets.bin",
                            hint=space_hint) as (ft, fo):
        fo.write(np.zeros(1, np.int64).tobytes())
        for chunk in _chunks(docs, chunk_size):
            encoded = _encode_chunk(tokenizer, chunk)
            lengths = np.array([len(ids) + 1 for ids in encoded], np.int64)
            flat = np.empty(int(lengths.sum()), dtype)
            ends = np.cumsum(lengths)
            starts = ends - lengths
            for ids, s, e in zip(encoded, starts, ends):
                flat[s:e - 1] = ids
            flat[ends - 1] = tokenizer.eos_id
            ft.write(flat.tobytes())
            fo.write((n_tokens + ends).tobytes())
            n_tokens += len(flat)
            n_docs += len(encoded)
            if log_every and n_docs // log_every != (n_docs - len(encoded)) // log_every:
                print(f"  {prefix}: {n_docs} documents, {n_tokens} tokens", flush=True)
    info = dict(meta or {}, format=CACHE_FORMAT, dtype=np.dtype(dtype).name, num_tokens=n_tokens,
                num_documents=n_docs, eos_id=tokenizer.eos_id, vocab_size=tokenizer.vocab_size)
    with files.atomic_write(prefix + ".json", mode="w", hint=space_hint) as f:  # last: marks complete
        json.dump(info, f, indent=1)
    return load_tokenized(prefix)


def load_tokenized(prefix: str) -> Optional[TokenizedCorpus]:
    """The memory-mapped corpus at `prefix`, or None if there is no complete cache."""
    try:
        with open(prefix + ".json") as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    if info.get("format") != CACHE_FORMAT:
        return None
    n = info["num_tokens"]
    tokens = (np.memmap(prefix + ".tokens.bin", dtype=info["dtype"], mode="r", shape=(n,))
              if n else np.zeros((0,), info["dtype"]))
    offsets = np.fromfile(prefix + ".offsets.bin", dtype=np.int64)
    if len(offsets) != info["num_documents"] + 1 or offsets[-1] != n:
        return None
    return TokenizedCorpus(tokens, offsets)


def document_order(num_documents: int, seed: Optional[int]) -> Optional[np.ndarray]:
    """The seeded document permutation (None: stored order)."""
    if seed is None:
        return None
    return np.random.default_rng([int(seed), 0x5EDD]).permutation(num_documents)


def pack(corpus: TokenizedCorpus, length: int, seed: Optional[int] = None,
         what: str = "corpus", bos_eos: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Concatenates documents (seeded order if `seed` is not None) into blocks [N, length].

    The trailing T mod length tokens are dropped. Without a seed the result is a view of the
    (memory-mapped) token stream, so a corpus larger than memory costs no memory here.

    bos_eos=(bos, eos): MDLM's wrap. The stream is cut into chunks of length - 2 and each block is
    [bos] + chunk + [eos] (a new [N, length] array, N = T // (length - 2)).
    """
    if length <= 0 or (bos_eos is not None and length < 3):
        raise ValueError(f"block length must be positive (at least 3 with BOS/EOS framing), got {length}")
    if bos_eos is not None:
        inner = pack(corpus, length - 2, seed=seed, what=what)
        blocks = np.empty((len(inner), length), inner.dtype)
        blocks[:, 0], blocks[:, -1] = bos_eos
        blocks[:, 1:-1] = inner
        return blocks
    n_blocks = corpus.num_tokens // length
    if corpus.num_documents == 0 or n_blocks == 0:
        raise ValueError(
            f"{what} is empty or too small: {corpus.num_documents} documents, {corpus.num_tokens} "
            f"tokens, fewer than one block of config.model.length={length} tokens")
    order = document_order(corpus.num_documents, seed)
    if order is None:
        stream = corpus.tokens[: n_blocks * length]
    else:
        starts = corpus.offsets[:-1][order]
        lengths = np.diff(corpus.offsets)[order]
        new_starts = np.zeros_like(starts)
        np.cumsum(lengths[:-1], out=new_starts[1:])
        # gather index: token k of the permuted stream comes from starts[d] + (k - new_starts[d])
        idx = np.repeat(starts - new_starts, lengths)
        idx = idx[: n_blocks * length] + np.arange(n_blocks * length, dtype=np.int64)
        stream = np.asarray(corpus.tokens)[idx]
    return stream.reshape(n_blocks, length)
