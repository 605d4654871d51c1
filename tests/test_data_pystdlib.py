"""The offline default corpus: Python's standard library, SentencePiece trained once, no download."""
import os
import time

import numpy as np

from sedd_jax import data

from tests.data_testing import make_config


def test_pystdlib_default_loads_offline_and_reuses_its_tokenizer(tmp_path, monkeypatch):
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(
        OSError("no network in this test")))
    config = make_config(tmp_path, train="pystdlib", valid="pystdlib", tokenizer="sentencepiece",
                         sp_vocab_size=1024)
    config.tokens = 1024
    config.model.length = 128
    workdir = str(tmp_path / "work")
    start = time.time()
    bundle = data.create_datasets(config, workdir, process_index=0, process_count=1)
    first = time.time() - start
    sp_model = os.path.join(workdir, "tokenizer", "sp.model")
    mtime = os.stat(sp_model).st_mtime_ns
    batch = next(bundle.train_iter)
    assert batch.shape == (4, 128) and batch.dtype == np.int32 and batch.max() < 1024
    assert bundle.train_blocks > 1000 and bundle.eval_blocks > 10
    assert bundle.tokenizer.eos_id == 2 and bundle.tokenizer.vocab_size == 1024
    start = time.time()
    again = data.create_datasets(config, workdir, process_index=0, process_count=1)
    rerun = time.time() - start
    assert os.stat(sp_model).st_mtime_ns == mtime                # trained once, reused
    np.testing.assert_array_equal(next(again.train_iter), batch)  # same data for the same seed
    assert data.get_tokenizer(config, workdir).encode("import os\n") == \
        bundle.tokenizer.encode("import os\n")
    print(f"pystdlib: first load {first:.2f}s (incl. SentencePiece training), rerun {rerun:.2f}s")
