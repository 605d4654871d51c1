"""Tokenizers: char (text8), SentencePiece trained once and cached, GPT-2 offline error, vocab check."""
import os
import sys

import numpy as np
import pytest

from sedd_jax import data
from sedd_jax.data import tokenizers

from tests.data_testing import make_config, write_corpus


def test_char_tokenizer_roundtrip_and_eos():
    tok = tokenizers.CharTokenizer()
    assert (tok.vocab_size, tok.eos_id) == (28, 27)
    ids = tok.encode("hello world")
    assert ids == [8, 5, 12, 12, 15, 0, 23, 15, 18, 12, 4]
    np.testing.assert_array_equal(tok.encode_array("hello world"), ids)
    assert tok.decode(ids) == "hello world"
    # EOS is rendered, ids outside the vocabulary (e.g. the absorbing MASK = tokens) are skipped
    assert tok.decode(ids[:5] + [27, 28, 1000] + ids[6:]) == "hello\nworld"
    with pytest.raises(ValueError, match="character 'H'"):
        tok.encode("Hello")


def test_sentencepiece_trained_once_and_reused(tmp_path):
    glob = write_corpus(tmp_path / "corpus", num_files=30)
    config = make_config(tmp_path, tokenizer="sentencepiece", files=glob, sp_vocab_size=400)
    config.tokens = 1000
    workdir = str(tmp_path / "work")
    tok = data.get_tokenizer(config, workdir)
    path = os.path.join(workdir, "tokenizer", "sp.model")
    assert os.path.exists(path) and tok.vocab_size == 400 and tok.eos_id == 2
    mtime = os.stat(path).st_mtime_ns
    text = "alpha beta\n    gamma  delta\n"
    assert tok.decode(tok.encode(text)) == text          # whitespace-exact
    tok2 = data.get_tokenizer(config, workdir)           # loaded, not retrained
    assert os.stat(path).st_mtime_ns == mtime
    assert tok2.encode(text) == tok.encode(text)
    assert tok.decode(tok.encode("alpha") + [tok.eos_id] + tok.encode("beta") + [400, 1000]) == \
        "alpha<eos>beta"
    # a workdir holding a model of another vocabulary size is an error, not a silent retrain
    config.data.sp_vocab_size = 600
    with pytest.raises(ValueError, match="400 pieces but config.data.sp_vocab_size=600"):
        data.get_tokenizer(config, workdir)


def test_tokenizer_larger_than_model_vocab(tmp_path):
    config = make_config(tmp_path, tokenizer="char")
    config.tokens = 20
    with pytest.raises(ValueError, match=r"28 ids .* config.tokens=20.*--config.tokens=28"):
        data.get_tokenizer(config, str(tmp_path))


def test_sentencepiece_vocab_too_large_for_corpus(tmp_path):
    glob = write_corpus(tmp_path / "corpus", num_files=3)
    config = make_config(tmp_path, tokenizer="sentencepiece", files=glob, sp_vocab_size=50000)
    config.tokens = 60000
    with pytest.raises(ValueError, match="sp_vocab_size"):
        data.get_tokenizer(config, str(tmp_path / "work"))


def test_unknown_tokenizer(tmp_path):
    config = make_config(tmp_path, tokenizer="bytes")
    with pytest.raises(ValueError, match="unknown tokenizer 'bytes'"):
        data.get_tokenizer(config, str(tmp_path))


def test_gpt2_without_network_says_what_to_predownload(tmp_path, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken.load
    import tiktoken.registry

    def no_network(url):
        raise ConnectionError(f"simulated: no network for {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})       # nothing loaded in-process
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    config = make_config(tmp_path, tokenizer="gpt2", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RuntimeError) as err:
        data.get_tokenizer(config, str(tmp_path))
    msg = str(err.value)
    assert "TIKTOKEN_CACHE_DIR=" + str(tmp_path / "cache" / "tiktoken") in msg
    assert "tiktoken.get_encoding('gpt2')" in msg and "ConnectionError: simulated: no network" in msg
    assert "python -m sedd_jax.data.prepare" in msg and "\n" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no download traceback chained


def test_gpt2_without_tiktoken_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if not installed
    config = make_config(tmp_path, tokenizer="gpt2")
    with pytest.raises(ImportError) as err:
        data.get_tokenizer(config, str(tmp_path))
    assert str(err.value) == 'the gpt2 tokenizer needs tiktoken: pip install "sedd-jax[gpt2]"'
    assert err.value.__cause__ is None and err.value.__suppress_context__
