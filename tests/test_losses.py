"""DWDSE loss: reference parity, the exact-score identity, and the value at initialisation."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sedd_jax import graphs, losses, models, noise, pretrained
from tests import exact_scores
from tests.conftest import TINY_CHECKPOINT


def test_loss_matches_reference(parity):
    model = pretrained.load(TINY_CHECKPOINT)
    loss_fn = losses.get_loss_fn(model.noise, model.graph, train=False)
    loss = loss_fn(model.log_score, jax.random.key(0), parity["x0"], t=parity["t"], perturbed_batch=parity["xt"])
    assert loss.shape == (4,) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, parity["loss"], rtol=1e-5)


def test_sampled_times_and_perturbation():
    graph, sched = graphs.get_graph("absorb", 7), noise.get_noise("loglinear")
    loss_fn = losses.get_loss_fn(sched, graph, train=True, sampling_eps=0.2)
    seen = {}

    def spy(x, sigma):
        seen["x"], seen["sigma"] = x, sigma
        return jnp.zeros(x.shape + (graph.dim,))

    x0 = jnp.zeros((4000, 16), jnp.int32)
    loss_fn(spy, jax.random.key(1), x0)
    t = 1 - np.exp(-np.asarray(seen["sigma"]))  # loglinear: masking probability (1 - eps) t
    t = t / (1 - 1e-3)
    assert t.min() >= 0.2 - 1e-5 and t.max() <= 1 + 1e-5
    assert abs(t.mean() - 0.6) < 0.02  # U[0.2, 1]
    masked = (np.asarray(seen["x"]) == graph.mask_id).mean(axis=1)
    np.testing.assert_allclose(masked.mean(), ((1 - 1e-3) * t).mean(), atol=0.01)
    # Rows are perturbed independently.
    assert len({tuple(r) for r in np.asarray(seen["x"][:50])}) >= 45  # (fully masked rows may coincide)


@pytest.mark.parametrize("graph_type, sched", [
    ("absorb", noise.get_noise("loglinear", eps=1e-3)),
    ("uniform", noise.get_noise("geometric", sigma_min=1e-4, sigma_max=20.0)),
])
def test_exact_score_loss_equals_negative_log_likelihood(graph_type, sched):
    """With the true concrete score, E[DWDSE] + KL(p_T|0 || p_T) = -log p0(x0) (the bound is tight)."""
    graph = graphs.get_graph(graph_type, 3)
    p0 = exact_scores.random_joint(tokens=3, length=3, seed=7, concentration=1.0)
    log_score_fn = exact_scores.exact_log_score_fn(graph_type, p0)
    loss_fn = jax.jit(lambda key, x0: losses.get_loss_fn(sched, graph, train=False, sampling_eps=1e-5)(
        log_score_fn, key, x0))
    total_noise = float(sched(1.0)[0])
    p_final = exact_scores.marginal(graph_type, p0, [total_noise])[0]
    draws = 40_000
    for flat_index in (int(np.argmax(p0)), int(np.argmin(p0))):
        x0 = np.array(np.unravel_index(flat_index, p0.shape), np.int32)
        values = np.concatenate([np.asarray(loss_fn(jax.random.key(k), jnp.tile(x0, (draws // 4, 1))))
                                 for k in range(4)])
        # Prior term, exact: sum over all x_T of p_T|0(x_T | x0) log(p_T|0(x_T | x0) / p_T(x_T)).
        point_mass = np.zeros_like(p0)
        point_mass[tuple(x0)] = 1.0
        p_cond = exact_scores.marginal(graph_type, point_mass, [total_noise])[0]
        keep = p_cond > 0
        prior_kl = float((p_cond[keep] * np.log(p_cond[keep] / p_final[keep])).sum())
        estimate = values.mean() + prior_kl
        stderr = values.std() / np.sqrt(values.size)
        nll = -np.log(p0.reshape(-1)[flat_index])
        assert abs(estimate - nll) < 4 * stderr + 2e-3, (estimate, nll, stderr)


def test_fresh_absorb_model_loss_is_log_vocab_per_position():
    """Zero output layer: each masked position costs ln(N)/t, so E[loss] = (1 - eps) ln(N) L per sequence."""
    tokens, length, eps = 50, 32, 1e-3
    config = ml_collections.ConfigDict(dict(tokens=tokens, graph=dict(type="absorb"), model=dict(
        hidden_size=32, n_heads=2, n_blocks=1, cond_dim=16, length=length, dropout=0.0, scale_by_sigma=True)))
    model = models.get_model(config)
    params = flax.core.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32), jnp.ones((1,))))
    graph, sched = graphs.get_graph("absorb", tokens), noise.get_noise("loglinear", eps=eps)
    loss_fn = losses.get_loss_fn(sched, graph, train=False)
    # Parameters go in as a jit argument: closing over the all-zero output layer as a constant triggers an
    # XLA:CPU miscompile (garbage outputs for batches >= 128) in jaxlib 0.10.2.
    batched_loss = jax.jit(lambda params, key, x0, t, xt: loss_fn(
        lambda x, sigma: model.apply(params, x, sigma), key, x0, t, xt))
    x0 = jax.random.randint(jax.random.key(1), (4096, length), 0, tokens)
    t = jax.random.uniform(jax.random.key(2), (4096,), minval=1e-3, maxval=1.0)
    xt = jax.vmap(graph.sample_transition)(jax.random.split(jax.random.key(3), 4096), x0, sched(t)[0])
    loss = np.asarray(batched_loss(params, jax.random.key(4), x0, t, xt))
    masked = (np.asarray(xt) == graph.mask_id).sum(1)
    # Per sample, exactly: loss = ln(N) * (#masked) / t.
    np.testing.assert_allclose(loss, np.log(tokens) * masked / np.asarray(t), rtol=1e-4)
    # On average over t ~ U[eps, 1] and masks: (1 - eps) ln(N) L.
    stratified = np.asarray(batched_loss(params, jax.random.key(5), x0, jnp.linspace(0.02, 1.0, 4096), None))
    ratio = stratified.mean() / ((1 - eps) * np.log(tokens) * length)
    assert abs(ratio - 1) < 0.02, ratio


def test_bad_shapes():
    graph, sched = graphs.get_graph("absorb", 7), noise.get_noise("loglinear")
    loss_fn = losses.get_loss_fn(sched, graph, train=False)
    with pytest.raises(AssertionError):
        loss_fn(lambda x, s: jnp.zeros(x.shape + (graph.dim,)), jax.random.key(0), jnp.zeros((8,), jnp.int32))
    with pytest.raises(AssertionError):  # a score function with the wrong vocabulary
        loss_fn(lambda x, s: jnp.zeros(x.shape + (7,)), jax.random.key(0), jnp.zeros((2, 8), jnp.int32))


def test_masked_positions_loss_matches_reference(parity):
    # The reference's loss on the fixture's x0, t and x_t, and the gradient of the whole-network loss.
    model = pretrained.load(TINY_CHECKPOINT)
    loss_fn = losses.MaskedPositionsLoss(model.noise, model.graph)
    trunk, head = models.trunk_and_head(model.model)
    inputs = dict(t=jnp.asarray(parity["t"]), perturbed_batch=jnp.asarray(parity["xt"]))
    loss, grads = loss_fn(trunk, head, model.model.head_param_names, model.params, jax.random.key(0),
                          jnp.asarray(parity["x0"]), 2, **inputs)
    np.testing.assert_allclose(loss, parity["loss"].mean(), rtol=1e-5)
    per_sequence = loss_fn.per_sequence(trunk, head, model.params, jax.random.key(0), jnp.asarray(parity["x0"]), 2,
                                        **inputs)
    assert per_sequence.shape == (4,) and per_sequence.dtype == jnp.float32
    np.testing.assert_allclose(per_sequence, parity["loss"], rtol=1e-5)
    whole = losses.get_loss_fn(model.noise, model.graph, train=False)
    expected = jax.grad(lambda p: whole(lambda x, s: model.model.apply({"params": p}, x, s), jax.random.key(0),
                                        jnp.asarray(parity["x0"]), **inputs).mean())(model.params)
    assert jax.tree.structure(grads) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))


@pytest.mark.parametrize("scan_blocks, remat, groups, chunks", [
    (False, "none", 1, 8), (True, "dots_no_batch", 2, 3), (False, "full", 4, 1), (True, "none", 8, 5)])
def test_masked_positions_loss_and_gradient_equal_the_whole_networks(scan_blocks, remat, groups, chunks):
    # A 2-block network with random weights, the times and x_t drawn from the key: the same draws, loss and gradient
    # as value_and_grad of get_loss_fn's loss (no dropout), for groupings of the rows and chunk counts that divide
    # a group's 16 x 8 / S positions or not.
    config = ml_collections.ConfigDict(dict(
        tokens=50, graph=dict(type="absorb"),
        model=dict(hidden_size=32, n_heads=2, n_blocks=2, cond_dim=16, length=16, dropout=0.0, scale_by_sigma=True,
                   scan_blocks=scan_blocks, remat=remat)))
    model = models.get_model(config)
    params = flax.core.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32), jnp.ones((1,))))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params["params"])
    graph, sched = graphs.get_graph("absorb", 50), noise.get_noise("loglinear")
    x0, key = jax.random.randint(jax.random.key(2), (8, 16), 0, 50), jax.random.key(3)
    whole = losses.get_loss_fn(sched, graph, train=True)
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: whole(lambda x, s: model.apply({"params": p}, x, s, train=True), key, x0).mean()))(params)
    masked = losses.MaskedPositionsLoss(sched, graph, chunks=chunks)
    trunk, head = models.trunk_and_head(model, train=True)
    got_loss, got_grads = jax.jit(lambda p: masked(trunk, head, model.head_param_names, p, key, x0, groups))(params)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))
    # Forward only, per sequence: get_loss_fn's values.
    values = whole(lambda x, s: model.apply({"params": params}, x, s), key, x0)
    got_values = jax.jit(lambda p: masked.per_sequence(*models.trunk_and_head(model), p, key, x0, groups))(params)
    np.testing.assert_allclose(got_values, values, rtol=1e-5)


def test_masked_positions_loss_rejects_what_it_cannot_compute():
    sched = noise.get_noise("loglinear")
    with pytest.raises(ValueError, match="needs the absorbing graph"):
        losses.MaskedPositionsLoss(sched, graphs.get_graph("uniform", 7))
    with pytest.raises(ValueError, match="chunks must be >= 1, got 0"):
        losses.MaskedPositionsLoss(sched, graphs.get_graph("absorb", 7), chunks=0)
    loss_fn = losses.MaskedPositionsLoss(sched, graphs.get_graph("absorb", 7))
    with pytest.raises(ValueError, match="6 rows do not split into 4 equal groups"):
        loss_fn(None, None, (), {}, jax.random.key(0), jnp.zeros((6, 8), jnp.int32), 4)
    with pytest.raises(ValueError, match="6 rows do not split into 4 equal groups"):
        loss_fn.per_sequence(None, None, {}, jax.random.key(0), jnp.zeros((6, 8), jnp.int32), 4)
