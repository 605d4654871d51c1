"""The GPT-2 judge (sedd_jax.judge) against Hugging Face outputs, and the generative-perplexity CLI.

The fixture is a tiny random GPT2LMHeadModel saved by transformers (tests/fixtures/gpt2_tiny_judge/README.md).
"""

import json
import math
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from sedd_jax import evaluate_samples, judge as judge_lib, official
from tests.conftest import FIXTURES, TINY_CHECKPOINT

JUDGE_DIR = FIXTURES / "gpt2_tiny_judge"


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "gpt2_tiny_judge_logits.npz"))


@pytest.fixture(scope="module")
def tiny_judge():
    return judge_lib.load(JUDGE_DIR)


@pytest.mark.parametrize("which", ["full", "short"])
def test_logits_match_transformers(tiny_judge, reference, which):
    ids = reference[f"ids_{which}"]
    np.testing.assert_allclose(tiny_judge.logits(ids), reference[f"logits_{which}"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(tiny_judge.log_likelihood(ids), reference[f"log_probs_{which}"], rtol=0, atol=2e-5)
    assert tiny_judge.perplexity(ids) == pytest.approx(math.exp(float(reference[f"loss_{which}"])), rel=1e-5)


def test_bfloat16_is_close(reference):
    bf16 = judge_lib.load(JUDGE_DIR, compute_dtype="bfloat16")
    logits = bf16.logits(reference["ids_full"])
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference["logits_full"], rtol=0, atol=0.15)


def test_hub_names_and_ragged_scoring(tiny_judge, reference):
    """The hub's gpt2 layout (no `transformer.` prefix, attn.bias buffers, lm_head.weight) gives the same
    parameters; score_sequences handles ragged and over-long sequences by windows of n_positions."""
    state = official.read_safetensors(str(JUDGE_DIR / "model.safetensors"))
    hub = {k.removeprefix("transformer."): v for k, v in state.items()}
    hub["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    hub["lm_head.weight"] = hub["wte.weight"]
    params = judge_lib.state_dict_to_params(hub, tiny_judge.config)
    flat = lambda tree: {k: np.asarray(v) for k, v in _flatten(tree).items()}
    ours, theirs = flat(params), flat(tiny_judge.params)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)

    full, short = reference["ids_full"], reference["ids_short"][0]
    long_row = np.concatenate([full[0], short])  # 43 tokens: windows of 32 and 11
    scored = tiny_judge.score_sequences([short.tolist(), long_row.tolist(), full[1].tolist()], batch_size=2)
    np.testing.assert_allclose(scored[0], reference["log_probs_short"][0], atol=2e-5)
    np.testing.assert_allclose(scored[1], np.concatenate([reference["log_probs_full"][0],
                                                          reference["log_probs_short"][0]]), atol=2e-5)
    np.testing.assert_allclose(scored[2], reference["log_probs_full"][1], atol=2e-5)


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _layer_norm(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_perplexity_of_known_cases():
    """A one-layer GPT-2 whose blocks add nothing (zero output projections) is a function of (token, position):
    logits = LN_f(wte[x_t] + wpe[t]) wte^T, computed here in float64 numpy. With zero embeddings every
    prediction is uniform and the perplexity is exactly the vocabulary size."""
    rng = np.random.default_rng(0)
    vocab, d, n_pos = 11, 8, 16
    config = judge_lib.config_from_dict(dict(model_type="gpt2", vocab_size=vocab, n_positions=n_pos, n_embd=d,
                                             n_layer=1, n_head=2, n_inner=None))
    state = {name: rng.normal(size=shape).astype(np.float32) for name, (_, shape) in judge_lib._key_map(config).items()}
    for name in ("h.0.attn.c_proj.weight", "h.0.attn.c_proj.bias", "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias"):
        state[name] = np.zeros_like(state[name])
    model = judge_lib.Judge(config, judge_lib.state_dict_to_params(state, config), "float32", "")
    ids = rng.integers(0, vocab, size=(3, 9))

    wte, wpe = state["wte.weight"].astype(np.float64), state["wpe.weight"].astype(np.float64)
    hidden = _layer_norm(wte[ids] + wpe[np.arange(ids.shape[1])], state["ln_f.weight"], state["ln_f.bias"])
    logits = hidden @ wte.T
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.take_along_axis(log_probs[:, :-1], ids[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(model.log_likelihood(ids), expected, atol=1e-5)
    assert model.perplexity(ids) == pytest.approx(math.exp(-expected.mean()), rel=1e-5)

    state["wte.weight"] = np.zeros_like(state["wte.weight"])
    uniform = judge_lib.Judge(config, judge_lib.state_dict_to_params(state, config), "float32", "")
    assert uniform.perplexity(ids) == pytest.approx(vocab, rel=1e-6)


def test_bad_judge_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download gpt2-large config.json model.safetensors"):
        judge_lib.load(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 64}))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        judge_lib.load(tmp_path)
    shutil.copy(JUDGE_DIR / "model.safetensors", tmp_path)
    with pytest.raises(ValueError, match="n_positions must be an integer"):
        judge_lib.load(tmp_path)
    config = json.loads((JUDGE_DIR / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, n_layer=3)))
    with pytest.raises(ValueError, match=r"missing \['h.2"):
        judge_lib.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(config, vocab_size=65)))
    with pytest.raises(ValueError, match=r"wte.weight: \(64, 32\) in the file, the config implies \(65, 32\)"):
        judge_lib.load(tmp_path)


# ------------------------------------------------------------------------------------------------- the CLI

def _write_samples(path, rows, **fields):
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(dict({"index": i, "ids": [int(t) for t in row], "checkpoint": "tiny", "seed": 0,
                                     "steps": 8, "predictor": "analytic", "method": "unbiased"}, **fields)) + "\n")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_scores_a_samples_file(tmp_path, reference, capsys):
    samples, output = tmp_path / "samples.jsonl", tmp_path / "out.json"
    _write_samples(samples, reference["ids_full"])
    assert evaluate_samples.main([f"--judge={JUDGE_DIR}", f"--samples={samples}", f"--output={output}"]) == 0
    record = json.loads(output.read_text())
    assert json.loads(capsys.readouterr().out)["generative_perplexity"] == record["generative_perplexity"]
    assert record["generative_perplexity"] == pytest.approx(math.exp(float(reference["loss_full"])), rel=1e-5)
    per_sample = np.exp(-reference["log_probs_full"].astype(np.float64).mean(-1))
    assert record["mean_sample_perplexity"] == pytest.approx(per_sample.mean(), rel=1e-5)
    assert record["scored_tokens"] == 62 and record["num_samples"] == 2
    entropies = [evaluate_samples.unigram_entropy(row.tolist()) for row in reference["ids_full"]]
    assert record["unigram_entropy"] == pytest.approx(np.mean(entropies))
    assert record["tokenization"].startswith("ids")
    assert (record["steps"], record["predictor"], record["method"], record["judge_compute_dtype"]) == (
        8, "analytic", "unbiased", "float32")


def test_unigram_entropy():
    assert evaluate_samples.unigram_entropy([5] * 10) == 0.0
    assert evaluate_samples.unigram_entropy([0, 1, 2, 3] * 3) == pytest.approx(math.log(4))


def _vocab_50_judge(tmp_path):
    """The fixture judge cut to the 50 tokens of the tiny SEDD checkpoint (rows of the tied embedding)."""
    state = official.read_safetensors(str(JUDGE_DIR / "model.safetensors"))
    state = {k: np.ascontiguousarray(v[:50] if k.endswith("wte.weight") else v) for k, v in state.items()}
    judge_dir = tmp_path / "judge50"
    judge_dir.mkdir()
    save_file(state, str(judge_dir / "model.safetensors"))
    config = json.loads((JUDGE_DIR / "config.json").read_text())
    (judge_dir / "config.json").write_text(json.dumps(dict(config, vocab_size=50)))
    return judge_dir


@pytest.mark.slow
def test_cli_samples_from_a_checkpoint(tmp_path, capsys):
    judge_dir = _vocab_50_judge(tmp_path)
    output = tmp_path / "out.json"
    argv = [f"--judge={judge_dir}", f"--checkpoint={TINY_CHECKPOINT}", "--num_samples=3", "--batch_size=2",
            "--steps=4", "--predictor=euler", "--method=reference", "--seed=1", f"--output={output}"]
    assert evaluate_samples.main(argv) == 0, capsys.readouterr().err
    record = json.loads(output.read_text())
    assert record["source"] == "checkpoint" and record["num_samples"] == 3 and record["scored_tokens"] == 3 * 31
    assert (record["steps"], record["predictor"], record["method"], record["seed"]) == (4, "euler", "reference", 1)
    assert record["tokenization"].startswith("ids") and record["sample_tokens"] == 50
    assert 0 < record["unigram_entropy"] <= math.log(32) and record["generative_perplexity"] > 1


@pytest.mark.parametrize("argv, message", [
    (["--judge={tmp}/nope", "--samples={samples}"],
     "huggingface-cli download gpt2-large config.json model.safetensors --local-dir {tmp}/nope"),
    (["--judge={judge}", "--samples={tmp}/empty.jsonl"], "holds no samples"),
    (["--judge={judge}", "--samples={tmp}/none.jsonl"], "does not exist"),
    (["--judge={judge}", "--samples={tmp}/big_ids.jsonl"], "outside the judge's vocabulary [0, 64)"),
    (["--judge={judge}", "--samples={tmp}/bad.jsonl"], "bad.jsonl:2: 'ids' must be a non-empty list"),
    (["--judge={judge}", "--samples={samples}", "--tokenize=text"], "needs a 'text' field"),
    (["--judge={judge}", "--samples={tmp}/with_text.jsonl", "--tokenize=text"], "has no tokenizer sedd-jax knows"),
    (["--judge={judge}", "--checkpoint=" + str(TINY_CHECKPOINT), "--num_samples=2", "--steps=2"],
     "the checkpoint's vocabulary (50 tokens, gpt2 tokenizer) is not the judge's (64 tokens)"),
    (["--judge={judge}"], "give exactly one of --samples"),
    (["--judge={judge}", "--checkpoint=" + str(TINY_CHECKPOINT)], "--num_samples >= 1"),
    (["--judge={judge}", "--samples={samples}", "--steps=3"], "only apply to sampling with --checkpoint"),
])
def test_cli_bad_input(tmp_path, reference, capsys, argv, message):
    samples = tmp_path / "samples.jsonl"
    _write_samples(samples, reference["ids_full"])
    (tmp_path / "empty.jsonl").write_text("\n")
    _write_samples(tmp_path / "big_ids.jsonl", [[1, 2, 64]])
    (tmp_path / "bad.jsonl").write_text('{"ids": [1, 2]}\n{"ids": []}\n')
    _write_samples(tmp_path / "with_text.jsonl", [[1, 2, 3]], text="hello")
    fill = lambda s: s.format(tmp=tmp_path, samples=samples, judge=JUDGE_DIR)
    assert evaluate_samples.main([fill(a) for a in argv]) == 1
    assert fill(message) in _error_line(capsys)


def test_retokenize_maps_eos_text():
    class Words:  # a stand-in for the GPT-2 BPE: one id per character
        eos_text, eos_id = "<|endoftext|>", 99

        def encode(self, text):
            return [ord(c) - ord("a") for c in text]

    rows = evaluate_samples.retokenize(["ab<|endoftext|>c", "<|endoftext|>"], Words())
    assert rows == [[0, 1, 99, 2], [99]]


def test_cli_rescores_text(tmp_path, monkeypatch, capsys):
    """--tokenize=text scores the re-tokenized `text`, not the ids (the judge's tokenizer is stubbed: the GPT-2
    BPE files are not available offline)."""
    class Letters:
        eos_text, eos_id = "<|endoftext|>", 63

        def encode(self, text):
            return [ord(c) - ord("a") for c in text]

    monkeypatch.setattr(evaluate_samples, "judge_tokenizer", lambda judge, cache_dir, why="": Letters())
    samples, output = tmp_path / "samples.jsonl", tmp_path / "out.json"
    _write_samples(samples, [[1, 2, 3]], text="hello<|endoftext|>world")
    argv = [f"--judge={JUDGE_DIR}", f"--samples={samples}", "--tokenize=text", f"--output={output}"]
    assert evaluate_samples.main(argv) == 0, capsys.readouterr().err
    record = json.loads(output.read_text())
    assert record["tokenization"].startswith("text") and record["scored_tokens"] == 10
    ids = [Letters().encode("hello") + [63] + Letters().encode("world")]
    expected = judge_lib.load(JUDGE_DIR).perplexity(np.array(ids))
    assert record["generative_perplexity"] == pytest.approx(expected, rel=1e-5)
