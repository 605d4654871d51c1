"""Packing invariants: exact block length, EOS-separated documents, every token once bar the remainder."""
import numpy as np
import pytest

from sedd_jax.data import packing, tokenizers

EOS = 27


def _corpus(num_docs=57, seed=0):
    rng = np.random.default_rng(seed)
    docs = [" ".join("abcdefghij"[: rng.integers(1, 10)] for _ in range(rng.integers(1, 12)))
            for _ in range(num_docs)]
    return docs, packing.tokenize_documents(docs, tokenizers.CharTokenizer(), chunk_size=10)


def test_tokenize_appends_eos_per_document():
    docs, corpus = _corpus()
    assert corpus.num_documents == len(docs)
    tok = tokenizers.CharTokenizer()
    for d, doc in enumerate(docs):
        ids = corpus.tokens[corpus.offsets[d]:corpus.offsets[d + 1]]
        assert list(ids[:-1]) == tok.encode(doc) and ids[-1] == EOS
    assert (corpus.tokens == EOS).sum() == len(docs)


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_pack_invariants(seed):
    docs, corpus = _corpus()
    length = 32
    blocks = packing.pack(corpus, length, seed=seed)
    total = corpus.num_tokens
    assert blocks.shape == (total // length, length)              # exactly the configured length
    remainder = total - blocks.size
    assert 0 <= remainder < length                                # the documented remainder
    # the blocks are the (seed-ordered) documents, each followed by EOS, cut every `length` tokens
    order = packing.document_order(len(docs), seed)
    order = range(len(docs)) if order is None else order
    stream = np.concatenate([corpus.tokens[corpus.offsets[d]:corpus.offsets[d + 1]] for d in order])
    np.testing.assert_array_equal(blocks.reshape(-1), stream[: blocks.size])
    # every token of the corpus appears once: multiset of blocks + remainder == corpus
    np.testing.assert_array_equal(
        np.bincount(np.concatenate([blocks.reshape(-1), stream[blocks.size:]]), minlength=28),
        np.bincount(corpus.tokens, minlength=28))
    # documents are separated by EOS: splitting the stream at EOS gives back the documents
    text = "".join(tokenizers.CharTokenizer.ALPHABET[t] if t != EOS else "|" for t in stream)
    assert text.split("|")[:-1] == [docs[d] for d in order]


def test_pack_is_deterministic_for_a_seed():
    _, corpus = _corpus()
    np.testing.assert_array_equal(packing.pack(corpus, 16, seed=3), packing.pack(corpus, 16, seed=3))
    assert not np.array_equal(packing.pack(corpus, 16, seed=3), packing.pack(corpus, 16, seed=4))


def test_written_cache_equals_in_memory(tmp_path):
    docs, corpus = _corpus()
    cached = packing.write_tokenized(docs, tokenizers.CharTokenizer(), str(tmp_path / "c"),
                                     chunk_size=7)
    assert isinstance(cached.tokens, np.memmap) and cached.tokens.dtype == np.uint16
    np.testing.assert_array_equal(cached.tokens, corpus.tokens)
    np.testing.assert_array_equal(cached.offsets, corpus.offsets)
    np.testing.assert_array_equal(packing.pack(cached, 32), packing.pack(corpus, 32))
    assert packing.load_tokenized(str(tmp_path / "missing")) is None


def test_empty_or_too_small_corpus_is_an_error():
    tok = tokenizers.CharTokenizer()
    with pytest.raises(ValueError, match="empty or too small: 0 documents"):
        packing.pack(packing.tokenize_documents([], tok), 32)
    with pytest.raises(ValueError, match="3 tokens, fewer than one block"):
        packing.pack(packing.tokenize_documents(["ab"], tok), 32)


@pytest.mark.parametrize("seed", [None, 2])
def test_mdlm_wrap_frames_every_block_with_bos_and_eos(seed):
    """MDLM's wrap (`dataloader._group_texts`): the EOS-separated stream cut every L - 2 tokens, each block
    [BOS] + chunk + [EOS]; here BOS = 5 to tell it from EOS = 27."""
    docs, corpus = _corpus()
    length, bos = 32, 5
    blocks = packing.pack(corpus, length, seed=seed, bos_eos=(bos, EOS))
    assert blocks.shape == (corpus.num_tokens // (length - 2), length)
    assert (blocks[:, 0] == bos).all() and (blocks[:, -1] == EOS).all()
    order = packing.document_order(len(docs), seed)
    order = range(len(docs)) if order is None else order
    stream = np.concatenate([corpus.tokens[corpus.offsets[d]:corpus.offsets[d + 1]] for d in order])
    inner = blocks[:, 1:-1].reshape(-1)
    np.testing.assert_array_equal(inner, stream[: inner.size])  # nothing else is inserted or lost
    assert 0 <= len(stream) - inner.size < length - 2
    np.testing.assert_array_equal(blocks[:, 1:-1], packing.pack(corpus, length - 2, seed=seed))
    with pytest.raises(ValueError, match="at least 3"):
        packing.pack(corpus, 2, bos_eos=(bos, EOS))
