"""The two evaluation protocols (docs/evaluation.md, "sedd vs mdlm protocol"): default splits, MDLM's wrapped
blocks, and both end to end offline (local files and TFDS mock data) with a JSON that names what was used."""

import json

import numpy as np
import pytest

from sedd_jax import evaluate, pretrained
from sedd_jax.data import datasets
from tests import evaluate_testing
from tests.data_testing import write_corpus

LENGTH = 32  # the tiny checkpoint's
EOS = 27     # the char tokenizer's, also MDLM's BOS here


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory):
    return evaluate_testing.char_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_default_splits_per_protocol():
    sedd = {"wikitext2": "train", "wikitext103": "test", "ptb": "test", "lm1b": "test", "lambada": "test",
            "ag_news": "test", "pubmed": "test", "arxiv": "test", "openwebtext": "validation"}
    # MDLM: its validation loader (`get_dataloaders`): "test" for text8 / lm1b / ag_news, lambada is test only.
    mdlm = {"wikitext2": "validation", "wikitext103": "validation", "ptb": "validation", "lm1b": "test",
            "lambada": "test", "ag_news": "test", "pubmed": "validation", "arxiv": "validation",
            "openwebtext": "validation", "text8": "test"}
    assert {name: evaluate.default_split(name, "sedd") for name in sedd} == sedd
    assert {name: evaluate.default_split(name, "mdlm") for name in mdlm} == mdlm


def _run(argv, output):
    assert evaluate.main(argv + [f"--output={output}"]) == 0
    return json.loads(output.read_text())


def test_both_protocols_end_to_end_on_files(char_checkpoint, tmp_path):
    glob = write_corpus(tmp_path / "corpus", num_files=6, words_per_file=40)
    argv = [f"--checkpoint={char_checkpoint}", "--dataset=files", f"--files={glob}", "--split=train",
            f"--cache_dir={tmp_path}/cache", "--mc_samples=4", "--batch_size=8", "--no_download"]
    reports = {p: _run(argv + [f"--protocol={p}"], tmp_path / f"{p}.json") for p in evaluate.PROTOCOLS}
    model = pretrained.load(char_checkpoint)
    config = evaluate.data_config(model, LENGTH, glob, str(tmp_path / "cache"), download=False)
    corpus = datasets.load_corpus(config, None, "files", "train", model.tokenizer)
    for protocol, report in reports.items():
        head, (result,) = report["protocol"], report["results"]
        assert head["protocol"] == result["protocol"] == protocol
        assert head["packing"] == result["packing"] == evaluate.PACKINGS[protocol]
        assert head["splits"] == {"files": "train"} and head["split_rule"] == "--split"
        assert result["dataset"] == "files" and result["split"] == "train" and result["detokenizer"] == "none"
        assert result["source"] == {"kind": "files", "tfds_name": None, "field": "text"}
        assert result["eos_id"] == EOS and result["tokens"] == result["blocks"] * LENGTH
    # sedd: T // L blocks, no BOS; mdlm: T // (L - 2) blocks framed [BOS] + chunk + [EOS], BOS = EOS.
    sedd, mdlm = reports["sedd"]["results"][0], reports["mdlm"]["results"][0]
    assert sedd["bos_id"] is None and sedd["total_blocks"] == corpus.num_tokens // LENGTH
    assert mdlm["bos_id"] == EOS and mdlm["total_blocks"] == corpus.num_tokens // (LENGTH - 2)
    # The mdlm blocks, checked directly: the sedd stream (same document order) cut every L - 2 and framed.
    wrapped = datasets.load_blocks(config, None, "files", "train", model.tokenizer, bos_eos=(EOS, EOS))
    assert (wrapped[:, 0] == EOS).all() and (wrapped[:, -1] == EOS).all()
    plain = np.asarray(datasets.load_blocks(config, None, "files", "train", model.tokenizer)).reshape(-1)
    inner = wrapped[:, 1:-1].reshape(-1)
    np.testing.assert_array_equal(inner[: plain.size], plain[: inner.size])
    # ... and they are what the mdlm run evaluated (block b uses fold_in(key(seed), b)).
    bounds, _ = model.log_likelihood_bound(wrapped, mc_samples=4, seed=0, batch_size=8)
    np.testing.assert_allclose(bounds.mean() / LENGTH, mdlm["nats_per_token"], rtol=1e-5)


def test_mdlm_zero_shot_datasets_end_to_end_with_tfds_mock_data(char_checkpoint, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    argv = [f"--checkpoint={char_checkpoint}", "--dataset=ag_news,pubmed", f"--cache_dir={tmp_path}/tfds",
            "--mc_samples=2", "--batch_size=4", "--max_blocks=4"]
    with tfds.testing.mock_data(num_examples=20):
        reports = {p: _run(argv + [f"--protocol={p}"], tmp_path / f"{p}.json") for p in evaluate.PROTOCOLS}
    expected = {"sedd": {"ag_news": "test", "pubmed": "test"},
                "mdlm": {"ag_news": "test", "pubmed": "validation"}}
    for protocol, report in reports.items():
        assert report["protocol"]["splits"] == expected[protocol]
        assert report["protocol"]["split_rule"] == f"{protocol} default"
        ag_news, pubmed = report["results"]
        assert (ag_news["dataset"], ag_news["detokenizer"]) == ("ag_news", "none")
        assert ag_news["source"] == {"kind": "tfds", "tfds_name": "ag_news_subset", "field": ["title", "description"]}
        assert (pubmed["dataset"], pubmed["detokenizer"]) == ("pubmed", "scientific_papers")
        assert pubmed["source"] == {"kind": "tfds", "tfds_name": "scientific_papers/pubmed", "field": "article"}
        for result in (ag_news, pubmed):
            assert result["split"] == expected[protocol][result["dataset"]]
            assert result["protocol"] == protocol and result["blocks"] == 4 and result["total_blocks"] >= 4
            assert np.isfinite(result["nats_per_token"])
        assert pubmed["bos_id"] == (EOS if protocol == "mdlm" else None)
