"""The SEDD network: parity with the reference forward, sizes, precision modes, dropout, axis names."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sedd_jax import models, pretrained
from sedd_jax.models import dropout_mask
from tests.conftest import TINY_CHECKPOINT


@pytest.fixture(scope="module")
def tiny():
    return pretrained.load(TINY_CHECKPOINT)


def test_forward_matches_reference_float32(tiny, parity):
    log_score = np.asarray(tiny.log_score(parity["x"], parity["sigma"]))
    assert log_score.dtype == np.float32 and log_score.shape == (4, 32, 51)
    np.testing.assert_allclose(log_score, parity["log_score"], atol=2e-5, rtol=0)
    # The loss's intermediate too (other inputs, other sigmas on both sides of the expm1 branch).
    np.testing.assert_allclose(tiny.log_score(parity["xt"], parity["loss_sigma"]), parity["loss_log_score"],
                               atol=2e-5, rtol=0)


def test_zero_at_current_token(tiny, parity):
    log_score = np.asarray(tiny.log_score(parity["x"], parity["sigma"]))
    at_current = np.take_along_axis(log_score, parity["x"][..., None], axis=-1)
    assert (at_current == 0).all()


def test_bfloat16_agrees_with_float32(parity):
    bf16 = pretrained.load(TINY_CHECKPOINT, compute_dtype="bfloat16")
    f32 = pretrained.load(TINY_CHECKPOINT)
    low = np.asarray(bf16.log_score(parity["x"], parity["sigma"]).astype(jnp.float32))
    high = np.asarray(f32.log_score(parity["x"], parity["sigma"]))
    assert bf16.log_score(parity["x"], parity["sigma"]).dtype == jnp.bfloat16
    # Compare the candidate tokens only (the current token's entry is fixed at 0 in both).
    current = jax.nn.one_hot(parity["x"], 51, dtype=bool)
    agreement = (np.where(current, -np.inf, low).argmax(-1) == np.where(current, -np.inf, high).argmax(-1)).mean()
    assert agreement >= 0.95, agreement
    # bf16 keeps ~3 significant digits; errors stay a small fraction of the log-score range.
    assert np.abs(low - high).max() < 0.05 * np.abs(high).max()


@pytest.mark.parametrize("size, total, non_embedding", [
    ("small", 169_627_218, 92.38e6), ("medium", 424_477_010, 321.50e6)])
def test_reference_sizes(size, total, non_embedding):
    config = ml_collections.ConfigDict(dict(tokens=50257, graph=dict(type="absorb"),
                                            model=models.model_config(size)))
    shapes = models.abstract_params(models.get_model(config))
    count = sum(np.prod(p.shape) for p in jax.tree.leaves(shapes))
    assert count == total
    embeddings = np.prod(shapes["embedding"].shape) + sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["output"]))
    assert abs((count - embeddings) - non_embedding) < 0.01e6


def _tiny_config(graph_type="absorb", dropout=0.0, scale_by_sigma=True):
    return ml_collections.ConfigDict(dict(
        tokens=12, graph=dict(type=graph_type),
        model=dict(hidden_size=32, n_heads=2, n_blocks=1, cond_dim=16, length=8, dropout=dropout,
                   scale_by_sigma=scale_by_sigma)))


def test_every_parameter_has_logical_axes():
    model = models.get_model(_tiny_config())
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1,)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, flax.core.meta.Partitioned))
    assert leaves and all(isinstance(p, flax.core.meta.Partitioned) for p in leaves)
    assert all(len(p.names) == p.value.ndim and None not in p.names for p in leaves)


def test_fresh_init_has_zero_output_layer_and_modulations():
    model = models.get_model(_tiny_config())
    params = flax.core.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.ones((1,))))["params"]
    for name in ("output", "final_adaLN"):
        assert all((np.asarray(p) == 0).all() for p in jax.tree.leaves(params[name]))
    assert (np.asarray(params["blocks_0"]["adaLN"]["kernel"]) == 0).all()
    assert np.asarray(params["embedding"]).std() > 0


def test_dropout_only_in_train_mode():
    model = models.get_model(_tiny_config(dropout=0.5))
    x, sigma = jnp.arange(16).reshape(2, 8) % 12, jnp.array([0.3, 2.0])
    params = model.init(jax.random.key(0), x, sigma)["params"]
    # Nonzero modulation gates so the dropped branches reach the output.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), flax.core.meta.unbox(params))
    evaluate = lambda: model.apply({"params": params}, x, sigma)
    train = lambda k: model.apply({"params": params}, x, sigma, train=True, rngs={"dropout": jax.random.key(k)})
    np.testing.assert_array_equal(evaluate(), evaluate())
    assert not np.allclose(train(0), evaluate())
    assert not np.allclose(train(0), train(1))


def test_threefry_matches_the_random123_test_vectors():
    """Threefry-2x32-20 known answers (Salmon et al. 2011; the same vectors as jax.random's threefry)."""
    u = lambda *v: jnp.array(v, jnp.uint32)
    key = (u(0, 0xFFFFFFFF, 0x13198A2E), u(0, 0xFFFFFFFF, 0x03707344))
    x0, x1 = dropout_mask.threefry2x32(key, u(0, 0xFFFFFFFF, 0x243F6A88), u(0, 0xFFFFFFFF, 0x85A308D3))
    np.testing.assert_array_equal(x0, u(0x6B200159, 0x1CB996FC, 0xC4923A9C))
    np.testing.assert_array_equal(x1, u(0x99BA4EFE, 0xBB002BE7, 0x483DF7A0))


@pytest.mark.parametrize("rate, shape", [(0.1, (16, 64, 256)), (0.5, (8, 33, 255))])
def test_dropout_keep_mask_statistics(rate, shape):
    """16 bits per element, four elements per hash: each kept with probability 1 - round(rate 2^16) / 2^16,
    independently of the elements sharing its hash; odd last axes work; the rescaled output is unbiased."""
    keep, p = dropout_mask.keep_mask(jax.random.key(3), shape, rate)
    assert keep.shape == shape and keep.dtype == jnp.bool_
    assert p == 1 - round(rate * 2**16) / 2**16 and abs(p - (1 - rate)) <= 2**-17
    keep = np.asarray(keep)
    n = keep.size
    assert abs(keep.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    m = -(-shape[-1] // 4)  # elements j, j + m, j + 2m, j + 3m share one hash
    for offset in (m, 2 * m, 3 * m):
        pairs = keep[..., :shape[-1] - offset] & keep[..., offset:]
        assert abs(pairs.mean() - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / pairs.size)
    other_key, _ = dropout_mask.keep_mask(jax.random.key(4), shape, rate)
    assert abs((keep & np.asarray(other_key)).mean() - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / n)
    x = jnp.full(shape, 3.0)
    dropped = np.asarray(jnp.where(keep, x / p, 0.0))
    assert set(np.unique(dropped)) <= {0.0, np.float32(3.0 / p)}
    assert abs(dropped.mean() - 3.0) < 5 * 3.0 * np.sqrt((1 - p) / (p * n))
    with pytest.raises(ValueError, match=r"dropout rate 1.0 must be in \[0, 1\)"):
        dropout_mask.keep_mask(jax.random.key(0), (4,), 1.0)


def test_uniform_graph_output_is_unscaled_logits():
    """Same weights: the absorb model with scale_by_sigma subtracts log(e^sigma - 1) + log(V - 1)."""
    absorb = models.get_model(_tiny_config())
    uniform_config = _tiny_config("uniform", scale_by_sigma=False)
    uniform_config.tokens = 13  # same vocabulary size as absorb over 12 tokens + MASK
    uniform = models.get_model(uniform_config)
    assert absorb.vocab_size == uniform.vocab_size == 13
    x, sigma = jnp.arange(16).reshape(2, 8) % 12, jnp.array([0.2, 3.0])
    params = flax.core.meta.unbox(absorb.init(jax.random.key(0), x, sigma))["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
    a = np.asarray(absorb.apply({"params": params}, x, sigma))
    u = np.asarray(uniform.apply({"params": params}, x, sigma))
    shift = np.log(np.expm1(np.asarray(sigma))) + np.log(12)
    current = np.asarray(jax.nn.one_hot(x, 13, dtype=bool))
    np.testing.assert_allclose(np.where(current, 0, u - shift[:, None, None]), a, atol=1e-5)


def test_uniform_with_scale_by_sigma_is_rejected():
    with pytest.raises(ValueError, match="uniform graph requires model.scale_by_sigma=False"):
        models.get_model(_tiny_config("uniform", scale_by_sigma=True))


def test_bad_model_shapes():
    config = _tiny_config()
    config.model.n_heads = 3
    with pytest.raises(ValueError, match="not divisible by model.n_heads"):
        models.get_model(config)
    with pytest.raises(ValueError, match="compute_dtype"):
        models.get_model(_tiny_config(), compute_dtype="float16")
