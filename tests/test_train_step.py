"""The pure pieces of the trainer: warm-up, EMA, gradient accumulation, skipped non-finite updates."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sedd_jax import models, parallel, train_state, train_step
from tests.train_testing import config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    c = config(tmp_path_factory.mktemp("cfg"))
    model = models.get_model(c)
    params = flax.core.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1,))))["params"]
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
    return c, model, params


def _state(optimizer, params):
    return train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=train_state.init_opt_state(optimizer, params), ema=jax.tree.map(jnp.copy, params))


def _deterministic_loss(scale=1.0):
    """A loss that ignores its key, so accumulated and whole-batch gradients can be compared exactly."""
    def loss_fn(log_score_fn, key, x0):
        del key
        return scale * (log_score_fn(x0, jnp.full((x0.shape[0],), 0.7)) ** 2).mean(axis=(1, 2))
    return loss_fn


def test_warmup_and_ema_schedules(setup):
    c, _, _ = setup
    c.optim.lr, c.optim.warmup, c.training.ema = 3e-4, 2500, 0.9999
    schedule = train_state.learning_rate_schedule(c)
    np.testing.assert_allclose([schedule(0), schedule(1249), schedule(2499), schedule(10**6)],
                               [3e-4 / 2500, 3e-4 / 2, 3e-4, 3e-4], rtol=1e-6)
    np.testing.assert_allclose(train_state.ema_decay(c, jnp.asarray(1)), 2 / 11, rtol=1e-6)
    np.testing.assert_allclose(train_state.ema_decay(c, jnp.asarray(10**7)), 0.9999, rtol=1e-7)


def test_gradient_accumulation_matches_the_whole_batch(setup):
    c, model, params = setup
    mesh = parallel.create_mesh(c)
    optimizer = train_state.create_optimizer(c)
    batch = jax.random.randint(jax.random.key(2), (8, 32), 0, 28)
    results = []
    for accum in (1, 2, 4):
        c.training.accum = accum
        step = jax.jit(train_step.make_train_step(c, model, _deterministic_loss(), optimizer, mesh))
        results.append(step(_state(optimizer, params), batch, jax.random.key(3)))
    c.training.accum = 1
    (s1, m1), *others = results
    for s, m in others:
        np.testing.assert_allclose(m["train_loss"], m1["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(m["grad_norm"], m1["grad_norm"], rtol=1e-4)
        for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(s1.params)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    # One update moved the parameters, and the EMA moved by (1 - 2/11) of the way (first decay 2/11).
    delta = jax.tree.leaves(jax.tree.map(lambda a, b: a - b, s1.params, params))
    assert max(float(jnp.abs(d).max()) for d in delta) > 0
    ema_delta = jax.tree.leaves(jax.tree.map(lambda a, b: a - b, s1.ema, params))
    for d, e in zip(delta, ema_delta):
        np.testing.assert_allclose(e, (1 - 2 / 11) * d, atol=1e-7)


def test_non_finite_update_is_skipped_and_counted(setup):
    c, model, params = setup
    mesh = parallel.create_mesh(c)
    optimizer = train_state.create_optimizer(c)
    step = jax.jit(train_step.make_train_step(c, model, _deterministic_loss(scale=jnp.nan), optimizer, mesh))
    state = _state(optimizer, params)
    new_state, metrics = step(state, jnp.zeros((8, 32), jnp.int32), jax.random.key(0))
    assert int(new_state.step) == 1 and int(metrics["update_skipped"]) == 1
    assert (int(new_state.opt_state.total), int(new_state.opt_state.consecutive)) == (1, 1)
    assert np.isnan(float(metrics["train_loss"]))
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(new_state.opt_state.inner), jax.tree.leaves(optimizer.init(params))):
        np.testing.assert_array_equal(a, b)


def test_unsafe_updates_are_skipped_and_counted_in_the_optimizer_state():
    optimizer = optax.sgd(1.0, momentum=0.5)
    params = {"w": jnp.ones(4)}                                       # norm 2
    state = train_state.init_opt_state(optimizer, params)

    def step(grad, loss=1.0):
        nonlocal params, state
        before = state
        params, state, skipped = train_state.apply_if_safe(optimizer, 2.0, {"w": jnp.full(4, grad)}, state, params,
                                                           jnp.asarray(loss))
        return np.asarray(params["w"]), before, int(skipped)

    new, _, skipped = step(0.5)                                       # applied: update norm 1 <= 2 * 2
    np.testing.assert_allclose(new, 0.5)
    assert skipped == 0 and (int(state.consecutive), int(state.total)) == (0, 0)
    for grad, loss in ((3.0, 1.0), (0.1, np.nan), (np.inf, 1.0)):     # too large (6.5 > 2 * 1), NaN loss, inf grads
        new, before, skipped = step(grad, loss)
        np.testing.assert_array_equal(new, 0.5)
        assert skipped == 1
        np.testing.assert_array_equal(state.inner[0].trace["w"], before.inner[0].trace["w"])  # momentum kept
    assert (int(state.consecutive), int(state.total)) == (3, 3)
    new, _, _ = step(0.5)                                             # momentum 0.5 * 0.5 + 0.5: 1.5 <= 2 * 1
    np.testing.assert_allclose(new, 0.5 - 0.75)
    assert (int(state.consecutive), int(state.total)) == (0, 3)
