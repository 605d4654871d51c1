"""Tokenizers: GPT-2 BPE (tiktoken), SentencePiece trained on the corpus, and text8 characters.

Every tokenizer has the same small interface (the trainer, the samplers and the CLIs rely on it):

  tok.encode(text: str) -> list[int]          no EOS added (packing appends it, §6.3)
  tok.encode_batch(texts) -> list[list[int]]  same, several documents (may use threads)
  tok.decode(ids) -> str                      ids >= vocab_size (e.g. the absorbing MASK) and
                                              negative ids are skipped; EOS is written as
                                              `tok.eos_text`
  tok.vocab_size: int                         number of ids, EOS included
  tok.eos_id: int                             the end-of-document id (< vocab_size)
  tok.eos_text: str                           how decode renders EOS

Kinds (`config.data.tokenizer`):
  "gpt2"           tiktoken's "gpt2" encoding, 50257 ids, EOS 50256 `<|endoftext|>` (= the
                   reference's GPT2TokenizerFast). Needs the network once to fetch its two BPE
                   files into TIKTOKEN_CACHE_DIR (set to `<cache_dir>/tiktoken` when unset).
  "sentencepiece"  BPE SentencePiece model with `config.data.sp_vocab_size` ids trained on a
                   bounded sample of the train corpus (whitespace-exact: identity normalisation,
                   byte fallback, "\\n" a piece), cached at `<workdir>/tokenizer/sp.model` and
                   reused. EOS is SentencePiece's eos id (2); unk 0, bos 1 (bos unused).
  "char"           text8 characters: " " -> 0, "a".."z" -> 1..26, EOS 27 (28 ids).
"""
from __future__ import annotations

import io
import os
from typing import Callable, Iterable, List, Optional, Sequence

from sedd_jax import extras, files
from sedd_jax.data import sources

TOKENIZER_KINDS = ("gpt2", "sentencepiece", "char")
GPT2_EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257


class Tokenizer:
    """Base class: subclasses define `_encode`, `_decode_segment`, vocab_size, eos_id, eos_text."""
    name: str = "tokenizer"
    vocab_size: int
    eos_id: int
    eos_text: str = "<eos>"

    def encode(self, text: str) -> List[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.encode(t) for t in texts]

    def _decode_segment(self, ids: List[int]) -> str:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes ids; EOS becomes `eos_text`, ids outside [0, vocab_size) are skipped."""
        pieces, segment = [], []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                pieces.append(self._decode_segment(segment))
                pieces.append(self.eos_text)
                segment = []
            elif 0 <= i < self.vocab_size:
                segment.append(i)
        pieces.append(self._decode_segment(segment))
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class CharTokenizer(Tokenizer):
    """text8 character tokenizer: " " 0, a-z 1-26, EOS 27. Other characters raise ValueError."""
    name = "char"
    ALPHABET = " abcdefghijklmnopqrstuvwxyz"

    def __init__(self):
        self.vocab_size = len(self.ALPHABET) + 1
        self.eos_id = len(self.ALPHABET)
        self.eos_text = "\n"
        self._table = {c: i for i, c in enumerate(self.ALPHABET)}

    def encode(self, text: str) -> List[int]:
        try:
            return [self._table[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"char tokenizer (text8 alphabet: space and a-z) got character {e.args[0]!r}") from None

    def encode_array(self, text: str):
        """Fast path for long strings: returns a numpy int32 array."""
        import numpy as np
        lut = np.full(256, 255, np.uint8)
        for c, i in self._table.items():
            lut[ord(c)] = i
        raw = np.frombuffer(text.encode("latin-1", errors="replace"), np.uint8)
        out = lut[raw]
        if (out == 255).any():
            bad = text[int((out == 255).argmax())]
            raise ValueError(f"char tokenizer (text8 alphabet: space and a-z) got character {bad!r}")
        return out.astype(np.int32)

    def _decode_segment(self, ids: List[int]) -> str:
        return "".join(self.ALPHABET[i] for i in ids)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (file path or serialized proto)."""
    name = "sentencepiece"

    def __init__(self, model_file: Optional[str] = None, model_proto: Optional[bytes] = None):
        import sentencepiece as spm
        if model_proto is None:
            with open(model_file, "rb") as f:
                model_proto = f.read()
        self.model_file = model_file
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = int(self._sp.get_piece_size())
        self.eos_id = int(self._sp.eos_id())
        if self.eos_id < 0:
            raise ValueError(f"SentencePiece model {model_file} has no EOS piece")

    def encode(self, text: str) -> List[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)

    def _decode_segment(self, ids: List[int]) -> str:
        return self._sp.decode(ids)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_path: str,
                        max_chars: int = 3_000_000) -> SentencePieceTokenizer:
    """Trains a BPE SentencePiece model on at most `max_chars` characters of `texts` (line-split).

    Whitespace is kept exactly (identity normalisation, no extra-whitespace removal, byte fallback,
    "\\n" as a user-defined piece), so decode(encode(text)) == text for source code. Written
    atomically to `model_path`.
    """
    import sentencepiece as spm
    lines, n_chars = [], 0
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                lines.append(line)
                n_chars += len(line)
        if n_chars >= max_chars:
            break
    if not lines:
        raise ValueError("cannot train SentencePiece: the training corpus is empty")
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=proto, vocab_size=vocab_size,
            model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
            byte_fallback=True, user_defined_symbols=["\n"], character_coverage=1.0,
            allow_whitespace_only_pieces=True, max_sentence_length=1 << 14,
            num_threads=os.cpu_count() or 1, minloglevel=2,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    except RuntimeError as e:
        raise ValueError(
            f"SentencePiece training with vocab size {vocab_size} failed on {n_chars} characters "
            f"({e}). With byte fallback it needs more than 259 pieces plus the corpus's distinct "
            "characters, and a corpus large enough for the merges: adjust --config.data.sp_vocab_size "
            "or use a larger corpus") from e
    os.makedirs(os.path.dirname(model_path) or ".", exist_ok=True)
    with files.atomic_write(model_path, hint=files.WORKDIR_SPACE_HINT) as f:
        f.write(proto.getvalue())
    return SentencePieceTokenizer(model_path)


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE via tiktoken (ids identical to transformers' GPT2TokenizerFast)."""
    name = "gpt2"

    def __init__(self, cache_dir: Optional[str] = None):
        tiktoken = extras.require("tiktoken", "the gpt2 tokenizer")
        if cache_dir and not os.environ.get("TIKTOKEN_CACHE_DIR"):
            os.environ["TIKTOKEN_CACHE_DIR"] = os.path.join(os.path.expanduser(cache_dir), "tiktoken")
        where = os.environ.get("TIKTOKEN_CACHE_DIR", "<tmp>/data-gym-cache")
        try:
            self._enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # no network: requests' ConnectionError, urllib errors, ...
            # `from None`: the cause is a long urllib3/requests chain; its message is quoted, shortened.
            raise RuntimeError(
                f"could not load the GPT-2 BPE files into {where} ({sources.describe_failure(e)}). Pre-download them "
                f"once on a machine with network: TIKTOKEN_CACHE_DIR={where} python -c "
                "\"import tiktoken; tiktoken.get_encoding('gpt2')\" (for training, `python -m "
                "sedd_jax.data.prepare --config=<your config>` does it too), then copy that directory here "
                f"and set TIKTOKEN_CACHE_DIR={where}") from None
        self.vocab_size = int(self._enc.n_vocab)
        self.eos_id = int(self._enc.eot_token)
        self.eos_text = "<|endoftext|>"

    def encode(self, text: str) -> List[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)

    def _decode_segment(self, ids: List[int]) -> str:
        return self._enc.decode(ids)


def check_vocab(tokenizer: Tokenizer, tokens: int) -> None:
    """Raises ValueError if the tokenizer has more ids than the model's vocabulary `tokens`."""
    if tokenizer.vocab_size > tokens:
        raise ValueError(
            f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} ids (EOS {tokenizer.eos_id} "
            f"included) but the model vocabulary is config.tokens={tokens}; set "
            f"--config.tokens={tokenizer.vocab_size} (or more), or use a smaller tokenizer")


def sentencepiece_path(workdir: str) -> str:
    return os.path.join(workdir, "tokenizer", "sp.model")


def build_tokenizer(kind: str, *, workdir: Optional[str] = None, cache_dir: Optional[str] = None,
                    sp_vocab_size: Optional[int] = None,
                    train_texts: Optional[Callable[[], Iterable[str]]] = None) -> Tokenizer:
    """Builds a tokenizer of `kind`; SentencePiece is loaded from the workdir or trained there.

    train_texts: a callable returning the train documents, called only when a SentencePiece model
    must be trained.
    """
    if kind == "char":
        return CharTokenizer()
    if kind == "gpt2":
        return GPT2Tokenizer(cache_dir)
    if kind == "sentencepiece":
        if workdir is None:
            raise ValueError("the sentencepiece tokenizer needs a workdir to cache its model in")
        path = sentencepiece_path(workdir)
        if os.path.exists(path):
            tok = SentencePieceTokenizer(path)
            if sp_vocab_size is not None and tok.vocab_size != sp_vocab_size:
                raise ValueError(
                    f"{path} holds a SentencePiece model with {tok.vocab_size} pieces but "
                    f"config.data.sp_vocab_size={sp_vocab_size}; use a fresh workdir, delete {path} to "
                    f"retrain, or set --config.data.sp_vocab_size={tok.vocab_size}")
            return tok
        if train_texts is None:
            raise FileNotFoundError(
                f"no SentencePiece model at {path}; it is trained on the first "
                "data.create_datasets(config, workdir) call")
        if not sp_vocab_size:
            raise ValueError("config.data.sp_vocab_size must be set to train a SentencePiece model")
        return train_sentencepiece(train_texts(), sp_vocab_size, path)
    raise ValueError(f"unknown tokenizer {kind!r}; config.data.tokenizer must be one of "
                     f"{TOKENIZER_KINDS}")
