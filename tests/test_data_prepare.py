"""openwebtext's one-time preparation (on TFDS mock data) and the held-out validation split."""
import dataclasses

import numpy as np
import pytest

from sedd_jax import data
from sedd_jax.data import prepare, sources

from tests.data_testing import make_config


def test_prepare_then_train_on_openwebtext(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    spec = sources.DATASETS["openwebtext"]
    assert spec.needs_prepare and spec.holdout_per_mille == 1
    # TFDS's huggingface:openwebtext cannot run under mock_data (it needs the hub), so the same path
    # runs on the native lm1b builder's mock data, with half the documents held out.
    monkeypatch.setitem(sources.DATASETS, "openwebtext",
                        dataclasses.replace(spec, tfds_name="lm1b", holdout_per_mille=500))
    config = make_config(tmp_path, train="openwebtext", valid="openwebtext", download=True)
    workdir = str(tmp_path / "work")
    with tfds.testing.mock_data(num_examples=200):
        with pytest.raises(data.DatasetUnavailableError, match="has not been prepared"):
            data.create_datasets(config, workdir, process_index=0, process_count=1)
        everything = list(sources.tfds_texts(sources.tfds_builder("lm1b", config.data.cache_dir),
                                             "train", "text"))
        train = list(sources.load_documents("openwebtext", "train", config))
        valid = list(sources.load_documents("openwebtext", "validation", config))
        prefixes = prepare.prepare(config, workdir)
    assert len(prefixes) == 2 and all("sedd_jax_tokenized" in p for p in prefixes)
    assert sorted(train + valid) == sorted(everything) and not set(train) & set(valid)
    assert 50 < len(valid) < 150
    # after preparation no TFDS access is needed: read from the token cache
    bundle = data.create_datasets(config, workdir, process_index=0, process_count=1)
    assert bundle.train_blocks == sum(len(t) + 1 for t in train) // 32
    assert next(bundle.train_iter).shape == (4, 32)
    corpus = data.load_corpus(config, workdir, "openwebtext", "train", bundle.tokenizer)
    assert corpus.num_documents == len(train)
    # stored order (no document shuffling for openwebtext): blocks are the token stream itself
    np.testing.assert_array_equal(data.load_blocks(config, workdir, "openwebtext", "train",
                                                   bundle.tokenizer).reshape(-1),
                                  corpus.tokens[: bundle.train_blocks * 32])
