"""Datasets: TFDS (mock_data), text8, lambada, local files, pystdlib, and clear errors. No network."""
import dataclasses
import json
import os
import urllib.request

import numpy as np
import pytest

from sedd_jax import data, extras
from sedd_jax.data import detokenizers, sources

from tests.data_testing import make_config, write_corpus


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("simulated: no network")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        yield tfds


def test_lm1b_with_tfds_mock_data(tmp_path, tfds_mock):
    config = make_config(tmp_path, train="lm1b", valid="lm1b", download=True)
    docs = list(sources.load_documents("lm1b", "test", config))
    raw = [t for t in sources.tfds_texts(
        sources.tfds_builder("lm1b", config.data.cache_dir), "test", "text")]
    assert len(docs) == 20 and docs == [data.lm1b_detokenizer(t) for t in raw]
    # end to end: mock text (letters and spaces) through the char tokenizer into batches
    bundle = data.create_datasets(config, str(tmp_path / "work"), process_index=0, process_count=1)
    batch = next(bundle.eval_iter)
    assert batch.shape == (4, 32) and batch.dtype == np.int32
    assert bundle.eval_blocks == sum(len(d) + 1 for d in docs) // 32


@pytest.mark.parametrize("name, field, detok", [
    ("wikitext2", "text", data.wt_detokenizer),
    ("wikitext103", "text", data.wt_detokenizer),
    ("ptb", "sentence", data.ptb_detokenizer),
])
def test_huggingface_datasets_text_path_with_mock_data(tmp_path, tfds_mock, monkeypatch, name,
                                                       field, detok):
    # TFDS's huggingface: builder needs the `datasets` package and the hub even under mock_data, so
    # the same path (tfds_builder -> as_dataset -> field -> detokenizer) runs on a native builder.
    spec = sources.DATASETS[name]
    assert spec.tfds_name.startswith("huggingface:") and spec.field == field
    monkeypatch.setitem(sources.DATASETS, name,
                        dataclasses.replace(spec, tfds_name="lm1b", field="text",
                                            splits=("train", "test"), eval_split="test"))
    config = make_config(tmp_path, download=True)
    docs = list(sources.load_documents(name, "test", config))
    raw = list(sources.tfds_texts(sources.tfds_builder("lm1b", config.data.cache_dir), "test", "text"))
    assert docs == [detok(t) for t in raw]


@pytest.mark.parametrize("name, tfds_name, splits, eval_split", [
    ("ag_news", "ag_news_subset", ("train", "test"), "test"),
    ("pubmed", "scientific_papers/pubmed", ("train", "validation", "test"), "validation"),
    ("arxiv", "scientific_papers/arxiv", ("train", "validation", "test"), "validation"),
])
def test_mdlm_zero_shot_datasets_with_tfds_mock_data(tmp_path, tfds_mock, name, tfds_name, splits,
                                                     eval_split):
    """MDLM's extra zero-shot sets: ag_news is Hugging Face's "text" (title + " " + description);
    pubmed / arxiv are the articles with MDLM's scientific_papers detokenizer (wikitext then lm1b)."""
    spec = sources.DATASETS[name]
    assert (spec.kind, spec.tfds_name, spec.splits, spec.eval_split) == ("tfds", tfds_name, splits, eval_split)
    config = make_config(tmp_path, train=name, valid=name, download=True)
    builder = sources.tfds_builder(tfds_name, config.data.cache_dir)
    for split in splits:
        docs = list(sources.load_documents(name, split, config))
        if name == "ag_news":
            titles = list(sources.tfds_texts(builder, split, "title"))
            descriptions = list(sources.tfds_texts(builder, split, "description"))
            expected = [t + " " + d for t, d in zip(titles, descriptions)]
        else:
            expected = [detokenizers.scientific_papers_detokenizer(t)
                        for t in sources.tfds_texts(builder, split, "article")]
        assert len(docs) == 20 and docs == expected
    # end to end through the char tokenizer into eval blocks
    bundle = data.create_datasets(config, str(tmp_path / "work"), process_index=0, process_count=1)
    assert next(bundle.eval_iter).shape == (4, 32) and bundle.eval_blocks > 0


def test_prepared_huggingface_dir_is_found_offline(tmp_path):
    base = tmp_path / "wikitext" / "wikitext_103_raw_v1"
    for version in ("1.0.0", "1.1.0"):
        (base / version).mkdir(parents=True)
        (base / version / "dataset_info.json").write_text("{}")
    assert sources._prepared_hf_dir("huggingface:wikitext/wikitext-103-raw-v1", str(tmp_path)) == \
        str(base / "1.1.0")
    assert sources._prepared_hf_dir("huggingface:ptb_text_only/penn_treebank", str(tmp_path)) is None


def test_tfds_not_prepared_and_no_download(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    config = make_config(tmp_path, train="wikitext103", valid="wikitext103", download=False)
    with pytest.raises(data.DatasetUnavailableError) as err:
        list(sources.load_documents("wikitext103", "validation", config))
    msg = str(err.value)
    assert "huggingface:wikitext/wikitext-103-raw-v1" in msg and config.data.cache_dir in msg
    assert "download_and_prepare()" in msg and "pip install datasets" in msg


def test_openwebtext_needs_prepare(tmp_path):
    config = make_config(tmp_path, train="openwebtext", valid="openwebtext", tokenizer="char",
                         download=False)
    config.tokens = 30
    with pytest.raises(data.DatasetUnavailableError, match="python -m sedd_jax.data.prepare"):
        data.create_datasets(config, str(tmp_path / "work"), process_index=0, process_count=1)


def test_text8_split_90_5_5(tmp_path):
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list(" abcdefghijklmnopqrstuvwxyz"), size=20_000))
    (tmp_path / "text8").write_text(text)
    config = make_config(tmp_path, train="text8", valid="text8", files=str(tmp_path / "text8"))
    parts = {s: list(sources.load_documents("text8", s, config)) for s in sources.SPLITS}
    assert [len(parts[s][0]) for s in sources.SPLITS] == [18_000, 1_000, 1_000]
    assert "".join(parts[s][0] for s in sources.SPLITS) == text
    assert sources.text8_split_bounds(100_000_000) == {
        "train": (0, 90_000_000), "validation": (90_000_000, 95_000_000),
        "test": (95_000_000, 100_000_000)}
    bundle = data.create_datasets(config, str(tmp_path / "work"), process_index=0, process_count=1)
    assert bundle.train_blocks == 18_001 // 32 and bundle.eval_blocks == 1_001 // 32
    assert bundle.tokenizer.decode(next(bundle.train_iter)[0]).replace(" ", "").isalpha()
    config.data.tokenizer = "gpt2"
    with pytest.raises(ValueError, match="needs --config.data.tokenizer=char"):
        data.get_tokenizer(config, str(tmp_path))


def test_text8_missing_without_network(tmp_path, no_network):
    config = make_config(tmp_path, train="text8", valid="text8", download=True)
    with pytest.raises(data.DatasetUnavailableError) as err:
        list(sources.load_documents("text8", "train", config))
    msg = str(err.value)
    assert sources.TEXT8_URL in msg and os.path.join(config.data.cache_dir, "text8") in msg
    assert "OSError: simulated: no network" in msg and "--config.data.files" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no download traceback chained


def _offline_download(self, *args, **kwargs):
    """A download failing as requests does offline: a ConnectionError raised while handling an OSError."""
    try:
        raise OSError("[Errno -3] Temporary failure in name resolution")
    except OSError as e:
        raise ConnectionError("HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries "
                              "exceeded with url: /lm1b.tar.gz " + "x" * 300) from e


def test_tfds_download_failure_is_one_message(tmp_path, tfds_mock, monkeypatch):
    monkeypatch.setattr(tfds_mock.core.DatasetBuilder, "download_and_prepare", _offline_download)
    config = make_config(tmp_path, train="lm1b", valid="lm1b", download=True)
    with pytest.raises(data.DatasetUnavailableError) as err:
        list(sources.load_documents("lm1b", "test", config))
    msg = str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert "(ConnectionError: HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries" in msg
    assert "x" * 200 not in msg  # the cause is quoted, shortened
    assert "python -m sedd_jax.data.prepare --config=<your config> --dataset=lm1b" in msg
    assert f"tfds.builder('lm1b', data_dir='{config.data.cache_dir}').download_and_prepare()" in msg


def test_huggingface_dataset_without_datasets_package(tmp_path, monkeypatch, capfd):
    pytest.importorskip("tensorflow_datasets")
    find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name == "datasets" else find_spec(name, *a))
    config = make_config(tmp_path, train="wikitext2", valid="wikitext2", download=True)
    with pytest.raises(data.DatasetUnavailableError) as err:
        list(sources.load_documents("wikitext2", "validation", config))
    msg = str(err.value)
    assert "needs the Hugging Face `datasets` package (not installed)" in msg and "pip install datasets" in msg
    assert "python -m sedd_jax.data.prepare --config=<your config> --dataset=wikitext2" in msg
    assert "Failed to import" not in capfd.readouterr().out  # TFDS's banner is not reached


QUIET_IMPORT = """
import os, sys
sys.path.insert(0, sys.argv[1])  # a stand-in tensorflow whose import writes to file descriptor 2 as TF's does
from sedd_jax.data import sources
sources._tfds()
"""
FAKE_TENSORFLOW = """
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n"
            b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see ...\\n"
            b"E0000 00:00:1.0 1 cuda.cc:1] a real error\\n")
"""


def test_tensorflow_banners_are_dropped_other_lines_kept(tmp_path):
    """The data layer imports TensorFlow without its start-up banners; any other line it writes is kept."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "tensorflow.py").write_text(FAKE_TENSORFLOW)
    (tmp_path / "fake" / "tensorflow_datasets.py").write_text("")
    done = subprocess.run([sys.executable, "-c", QUIET_IMPORT, str(tmp_path / "fake")], capture_output=True,
                          text=True, cwd=repo, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "E0000 00:00:1.0 1 cuda.cc:1] a real error\n")
    real = subprocess.run([sys.executable, "-c", "from sedd_jax.data import sources; sources._tfds(); "
                           "import tensorflow"], capture_output=True, text=True, cwd=repo, timeout=120)
    assert real.returncode == 0, real.stderr
    assert not any(banner in real.stderr for banner in extras.TENSORFLOW_BANNERS), real.stderr
    assert real.stdout == ""


def test_lambada_jsonl(tmp_path, no_network):
    rows = ["\N{LEFT DOUBLE QUOTATION MARK}Go,\N{RIGHT DOUBLE QUOTATION MARK} he said ", "the end"]
    os.makedirs(tmp_path / "tfds" / "lambada")
    with open(tmp_path / "tfds" / "lambada" / "lambada_test.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"text": r}) + "\n")
    config = make_config(tmp_path, valid="lambada")
    assert list(sources.load_documents("lambada", "test", config)) == ['\n"Go," he said', "\nthe end"]
    with pytest.raises(ValueError, match="dataset 'lambada' has no split 'train'"):
        list(sources.load_documents("lambada", "train", config))
    os.remove(tmp_path / "tfds" / "lambada" / "lambada_test.jsonl")
    with pytest.raises(data.DatasetUnavailableError, match="wget " + sources.LAMBADA_URL):
        list(sources.load_documents("lambada", "test", config))


def test_files_split_is_deterministic_disjoint_and_complete(tmp_path):
    glob = write_corpus(tmp_path / "corpus", num_files=200)
    config = make_config(tmp_path, files=glob)
    train = list(sources.load_documents("files", "train", config))
    valid = list(sources.load_documents("files", "validation", config))
    assert len(train) + len(valid) == 200 and 0 < len(valid) < 10
    assert not set(train) & set(valid)
    assert list(sources.load_documents("files", "validation", config)) == valid
    # one file: the last 2% of its characters (from a line start) is the validation split
    (tmp_path / "one.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    config.data.files = str(tmp_path / "one.txt")
    train, = sources.load_documents("files", "train", config)
    valid, = sources.load_documents("files", "validation", config)
    assert train + valid == (tmp_path / "one.txt").read_text() and valid.startswith("line 9")


def test_pystdlib_split_is_fixed():
    rel = sources.list_pystdlib_files()
    assert len(rel) > 100 and "os.py" in rel
    assert not any(part in sources.PYSTDLIB_SKIP_DIRS for p in rel for part in p.split("/"))
    train, valid = sources.split_paths(rel)
    assert len(train) + len(valid) == len(rel) and not set(train) & set(valid)
    assert 0.005 < len(valid) / len(rel) < 0.05
    assert all(sources._bucket(p, 100) < 2 for p in valid)   # crc32(relative path) % 100 < 2


def test_unknown_dataset(tmp_path):
    config = make_config(tmp_path, train="imagenet")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; known datasets: pystdlib"):
        data.create_datasets(config, str(tmp_path), process_index=0, process_count=1)


def test_missing_files(tmp_path):
    config = make_config(tmp_path, files=str(tmp_path / "nothing" / "*.txt"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        data.create_datasets(config, str(tmp_path), process_index=0, process_count=1)
    config.data.files = ""
    with pytest.raises(ValueError, match="needs --config.data.files"):
        data.create_datasets(config, str(tmp_path), process_index=0, process_count=1)


def test_empty_corpus(tmp_path):
    for i in range(5):
        (tmp_path / f"e{i}.txt").write_text("")
    config = make_config(tmp_path, files=str(tmp_path / "*.txt"))
    with pytest.raises(ValueError, match="'files' split 'train' is empty or too small"):
        data.create_datasets(config, str(tmp_path / "work"), process_index=0, process_count=1)
    config.data.tokenizer = "sentencepiece"
    config.data.sp_vocab_size = 300
    with pytest.raises(ValueError, match="training corpus is empty"):
        data.create_datasets(config, str(tmp_path / "work"), process_index=0, process_count=1)


def test_import_does_not_load_tensorflow():
    import subprocess
    import sys
    code = ("import sys, sedd_jax.data; "
            "print([m for m in ('tensorflow', 'tensorflow_datasets', 'grain', 'sentencepiece', "
            "'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "[]"
