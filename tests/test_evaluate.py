"""Likelihood-bound evaluation: the exact-score identity, Monte-Carlo intervals, layout independence, the CLI."""

import json
import os
import pathlib
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sedd_jax import evaluate, graphs, likelihood, models, noise, pretrained
from tests import evaluate_testing, exact_scores

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over a lazy dog and then some more words appear here".split()


@pytest.mark.parametrize("graph_type, sched", [
    ("absorb", noise.get_noise("loglinear", eps=1e-3)),
    ("uniform", noise.get_noise("geometric", sigma_min=1e-4, sigma_max=20.0)),
])
def test_exact_score_bound_is_tight_within_its_interval(graph_type, sched):
    """With the true score, E[DWDSE](x0) + KL(p_1|0(.|x0) || p_1) = -log p0(x0) (up to the [0, eps] sliver), and
    with the reported prior term the bound is >= -log p0(x0)."""
    tokens, length, eps = 3, 3, 1e-5
    graph = graphs.get_graph(graph_type, tokens)
    p0 = exact_scores.random_joint(tokens=tokens, length=length, seed=7, concentration=1.0)
    exact = exact_scores.exact_log_score_fn(graph_type, p0)
    flat = [int(np.argmax(p0)), int(np.argmin(p0))]
    x0 = np.stack([np.array(np.unravel_index(i, p0.shape), np.int32) for i in flat])
    bounds, stderrs = likelihood.sequence_bounds(lambda params, x, sigma: exact(x, sigma), None, graph, sched, x0,
                                                 mc_samples=4096, seed=3, sampling_eps=eps, batch_size=2)
    total_noise = float(sched(1.0)[0])
    p_final = exact_scores.marginal(graph_type, p0, [total_noise])[0]
    prior_kl, _ = likelihood.prior_kl_per_token(graph, sched, graph_type)
    for bound, stderr, index, x in zip(bounds, stderrs, flat, x0):
        point_mass = np.zeros_like(p0)
        point_mass[tuple(x)] = 1.0
        p_cond = exact_scores.marginal(graph_type, point_mass, [total_noise])[0]
        keep = p_cond > 0
        kl_to_marginal = float((p_cond[keep] * np.log(p_cond[keep] / p_final[keep])).sum())
        nll = -np.log(p0.reshape(-1)[index])
        assert 0 < stderr < 0.1 * nll
        assert abs(bound + kl_to_marginal - nll) < 4 * stderr + 2e-3, (bound, kl_to_marginal, nll, stderr)
        assert bound + length * prior_kl > nll - 4 * stderr
        if graph_type == "uniform":  # p_1 is uniform to e^-20: the reported prior term is the exact one
            np.testing.assert_allclose(length * prior_kl, kl_to_marginal, atol=1e-6)


def _constant_score_bounds(x0, mc_samples, t_grid, seed=0):
    """Uniform graph, geometric noise, log score 0: the per-draw loss varies mostly with t."""
    graph = graphs.get_graph("uniform", 5)
    return likelihood.sequence_bounds(lambda params, x, sigma: jnp.zeros(x.shape + (graph.dim,)), None, graph,
                                      noise.get_noise("geometric"), x0, mc_samples=mc_samples, t_grid=t_grid,
                                      seed=seed, batch_size=len(x0))


def test_interval_shrinks_as_one_over_sqrt_k_and_stratification_narrows_it():
    x0 = np.random.default_rng(0).integers(0, 5, (8, 48))
    pooled = {}
    for t_grid in likelihood.T_GRIDS:
        for k in (16, 64):
            bounds, stderrs = _constant_score_bounds(x0, k, t_grid)
            pooled[t_grid, k] = bounds.mean(), np.sqrt((stderrs ** 2).sum()) / len(x0)
    ratio = pooled["iid", 16][1] / pooled["iid", 64][1]
    assert 1.5 < ratio < 2.7, ratio
    # Stratified: at least as fast (faster here: the t part of the variance of a smooth integrand falls as K^-3).
    assert pooled["stratified", 16][1] / pooled["stratified", 64][1] > 1.5
    for k in (16, 64):
        (mean_iid, se_iid), (mean_strat, se_strat) = pooled["iid", k], pooled["stratified", k]
        assert se_strat < 0.6 * se_iid, (k, se_iid, se_strat)
        assert abs(mean_iid - mean_strat) < 4 * np.hypot(se_iid, se_strat)


def test_stratified_variance_estimator_is_calibrated():
    """The collapsed-strata standard error is close to (and not below) the spread of independent repeats (rows
    with the same tokens are independent repeats: row i draws from fold_in(key, i))."""
    x0 = np.repeat(np.random.default_rng(1).integers(0, 5, (1, 48)), 64, axis=0)
    bounds, stderrs = _constant_score_bounds(x0, 16, "stratified")
    reported = np.sqrt(np.mean(stderrs ** 2))
    assert 0.8 < reported / bounds.std(ddof=1) < 2.0, (reported, bounds.std(ddof=1))


def test_mean_variance_by_hand():
    draws = np.array([[1.0, 3.0, 2.0, 6.0, 4.0]])
    mean, var = likelihood.mean_variance(draws, "iid")
    np.testing.assert_allclose(mean, [3.2])
    np.testing.assert_allclose(var, [np.var(draws, ddof=1) / 5])
    _, var = likelihood.mean_variance(draws, "stratified")  # triple (1, 3, 2): 3 (1 - 6 + 2)^2 / 6; pair (6, 4): 2 * 4 / 2
    np.testing.assert_allclose(var, [(4.5 + 4.0) / 25])
    _, var = likelihood.mean_variance(draws[:, :4], "stratified")  # triple (1, 3, 2); the 4th stratum: (2 - 6)^2 / 2
    np.testing.assert_allclose(var, [(4.5 + 8.0) / 16])
    # A mean linear in t (one draw per stratum, no noise) has no stratified variance.
    _, var = likelihood.mean_variance(np.arange(9.0)[None], "stratified")
    np.testing.assert_allclose(var, [0.0], atol=1e-12)
    assert np.isnan(likelihood.mean_variance(draws[:, :1], "iid")[1][0])


# ----------------------------------------------------------------------------- the tiny checkpoint, offline


@pytest.fixture(scope="module")
def char_checkpoint(tmp_path_factory):
    return evaluate_testing.char_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(3):
        (root / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(120)))
    return root


@pytest.fixture(scope="module")
def model(char_checkpoint):
    return pretrained.load(char_checkpoint)


@pytest.mark.parametrize("t_grid", ["iid", "stratified"])
def test_draws_at_masked_positions_equal_the_whole_networks(model, t_grid):
    # The checkpoint's graph is absorbing: its draw function runs the last layers at masked positions only. The same
    # draws as the whole network's, and so does draw_losses with 2 groups of rows and 3 chunks.
    assert model.graph.absorb
    x0 = np.random.default_rng(3).integers(0, 50, (4, 32)).astype(np.int32)
    ids, key = np.arange(4, dtype=np.int32) + 10, jax.random.key(5)
    whole = jax.jit(likelihood.draw_losses(lambda p, x, s: model.model.apply({"params": p}, x, s), model.graph,
                                           model.noise, 6, t_grid=t_grid))(model.params, x0, ids, key)
    assert whole.shape == (4, 6) and np.all(whole >= 0) and np.ptp(whole) > 0
    np.testing.assert_allclose(model.draw_losses_fn(6, t_grid)(model.params, x0, ids, key), whole, rtol=1e-5)
    grouped = likelihood.draw_losses(None, model.graph, model.noise, 6, t_grid=t_grid,
                                     trunk_and_head=models.trunk_and_head(model.model), groups=2, position_chunks=3)
    np.testing.assert_allclose(jax.jit(grouped)(model.params, x0, ids, key), whole, rtol=1e-5)


def _argv(char_checkpoint, corpus, tmp_path, *extra):
    return [f"--checkpoint={char_checkpoint}", "--dataset=files", f"--files={corpus}/*.txt", "--split=train",
            f"--cache_dir={tmp_path}/cache", "--mc_samples=8", "--no_download", *extra]


def test_cli_end_to_end_json(char_checkpoint, corpus, model, tmp_path, capsys):
    output = tmp_path / "result.json"
    assert evaluate.main(_argv(char_checkpoint, corpus, tmp_path, "--batch_size=5", f"--output={output}")) == 0
    err = capsys.readouterr().err
    assert "blocks/s" in err and "ETA" in err and "perplexity <=" in err
    report = json.loads(output.read_text())
    protocol = report["protocol"]
    assert protocol["protocol"] == "sedd" and protocol["mc_samples"] == 8 and protocol["t_grid"] == "iid"
    assert protocol["length"] == 32 and protocol["seed"] == 0 and protocol["sampling_eps"] == 1e-3
    assert protocol["checkpoint"] == str(char_checkpoint) and protocol["tokenizer"] == "char"
    (result,) = report["results"]
    assert result["dataset"] == "files" and result["split"] == "train" and result["detokenizer"] == "none"
    assert result["tokens"] == result["blocks"] * 32 and result["blocks"] == result["total_blocks"] > 10
    nats = result["nats_per_token"]
    assert np.isclose(result["bits_per_token"], nats / np.log(2))
    assert np.isclose(result["perplexity_bound"], np.exp(nats))
    lo, hi = result["ci95_nats_per_token"]
    assert lo < nats < hi and np.isclose(hi - nats, 1.96 * result["mc_stderr_nats_per_token"])
    assert result["prior_kl_nats_per_token"] > 0 and result["wall_time_s"] > 0
    assert result["with_prior"]["nats_per_token"] > nats
    # The same numbers from the scoring API on the same blocks (block b uses fold_in(key(seed), b)).
    from sedd_jax.data import datasets
    config = evaluate.data_config(model, 32, f"{corpus}/*.txt", str(tmp_path / "cache"), download=False)
    blocks = datasets.load_blocks(config, None, "files", "train", model.tokenizer)
    bounds, _ = model.log_likelihood_bound(np.asarray(blocks), mc_samples=8, seed=0, batch_size=8)
    np.testing.assert_allclose(bounds.mean() / 32, nats, rtol=1e-5)


def test_scoring_api_texts_and_batch_size_independence(model):
    texts = ["the quick brown fox", "the dog"]  # two lengths: evaluated (and compiled) separately
    bounds, stderrs = model.log_likelihood_bound(texts, mc_samples=8, seed=1, batch_size=1)
    assert bounds.shape == stderrs.shape == (2,) and (bounds > 0).all() and (stderrs > 0).all()
    single, _ = model.log_likelihood_bound(texts[1], mc_samples=8, seed=1, batch_size=1)
    assert single[0] != bounds[1]  # sequence i uses fold_in(key, i): the same text at index 0 draws differently
    x = np.random.default_rng(0).integers(0, 50, (6, 32))
    a, sa = model.log_likelihood_bound(x, mc_samples=8, seed=2, batch_size=8)
    b, sb = model.log_likelihood_bound(x, mc_samples=8, seed=2, batch_size=5)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(sa, sb, rtol=1e-4)
    with pytest.raises(ValueError, match="model's length"):
        model.log_likelihood_bound(np.zeros((1, 33), np.int32), mc_samples=8)


MULTI_DEVICE = """
import json, sys
import jax
import numpy as np
from sedd_jax import evaluate, pretrained
assert jax.local_device_count() == 8, jax.devices()
model = pretrained.load(sys.argv[1])
x = np.random.default_rng(0).integers(0, 50, (6, 32))
bounds, stderrs = model.log_likelihood_bound(x, mc_samples=8, seed=2, batch_size=3)
assert evaluate.main(sys.argv[2:]) == 0
print("RESULT", json.dumps(dict(bounds=bounds.tolist(), stderrs=stderrs.tolist())))
"""


def test_one_and_eight_devices_agree(char_checkpoint, corpus, model, tmp_path, capsys):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    output8 = tmp_path / "eight.json"
    argv = _argv(char_checkpoint, corpus, tmp_path, "--batch_size=5", "--t_grid=stratified")
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE, str(char_checkpoint), *argv, f"--output={output8}"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eight = json.loads(proc.stdout.split("RESULT", 1)[1])
    x = np.random.default_rng(0).integers(0, 50, (6, 32))
    bounds, stderrs = model.log_likelihood_bound(x, mc_samples=8, seed=2, batch_size=8)
    np.testing.assert_allclose(eight["bounds"], bounds, rtol=1e-5)
    np.testing.assert_allclose(eight["stderrs"], stderrs, rtol=1e-4)
    output1 = tmp_path / "one.json"
    assert evaluate.main(argv + [f"--output={output1}"]) == 0
    one, eight = json.loads(output1.read_text())["results"][0], json.loads(output8.read_text())["results"][0]
    assert eight["devices"] == 8 and one["devices"] == 1
    for field in ("nats_per_token", "mc_stderr_nats_per_token", "perplexity_bound"):
        np.testing.assert_allclose(eight[field], one[field], rtol=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--dataset=nonexistent"], "unknown dataset 'nonexistent'"),
    (["--mc_samples=0"], "Monte-Carlo samples must be >= 1"),
    (["--length=64"], "model's length 32"),
    (["--t_grid=sobol"], "unknown t grid"),
    (["--protocol=gpt2"], "unknown protocol 'gpt2'; choose one of sedd, mdlm"),
    (["--split=test"], "has no split 'test'"),
])
def test_bad_input(char_checkpoint, corpus, tmp_path, capsys, extra, message):
    assert evaluate.main(_argv(char_checkpoint, corpus, tmp_path) + extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_vocabulary_mismatch(char_checkpoint, corpus, tmp_path, capsys, monkeypatch):
    class BigTokenizer:
        name, vocab_size, eos_id = "gpt2", 50257, 50256

    monkeypatch.setattr(pretrained.Pretrained, "tokenizer", property(lambda self: BigTokenizer()))
    assert evaluate.main(_argv(char_checkpoint, corpus, tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "does not match" in err and "50257" in err
    # A dataset that needs another tokenizer (text8: char).
    assert evaluate.main(_argv(char_checkpoint, corpus, tmp_path) + ["--dataset=text8", "--split=test"]) == 1
    assert "needs the char tokenizer" in capsys.readouterr().err


def test_module_entry_point_error_has_no_traceback(char_checkpoint, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "sedd_jax.evaluate", f"--checkpoint={char_checkpoint}",
                           "--dataset=wikitext2,bogus"], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: unknown dataset 'bogus'")
    assert "Traceback" not in proc.stderr


def test_two_processes_split_the_blocks_and_agree(char_checkpoint, corpus, tmp_path):
    """Two processes (jax.distributed on 127.0.0.1, 2 fake devices each) score blocks 0, 2, ... and 1, 3, ...;
    process 0 writes the same figures as one process alone."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    argv = _argv(char_checkpoint, corpus, tmp_path, "--batch_size=3")
    procs = [subprocess.Popen([sys.executable, "-m", "sedd_jax.evaluate", *argv, f"--output={tmp_path}/two_{i}.json",
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert not (tmp_path / "two_1.json").exists() and "nats_per_token" not in outputs[1][0]  # process 0 reports
    assert evaluate.main(argv + [f"--output={tmp_path}/one.json"]) == 0
    two = json.loads((tmp_path / "two_0.json").read_text())["results"][0]
    one = json.loads((tmp_path / "one.json").read_text())["results"][0]
    assert (two["processes"], two["devices"], two["blocks"]) == (2, 4, one["blocks"])
    for field in ("nats_per_token", "mc_stderr_nats_per_token", "perplexity_bound"):
        np.testing.assert_allclose(two[field], one[field], rtol=1e-5)
