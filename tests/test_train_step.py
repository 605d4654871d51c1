"""The pure pieces of the trainer: warm-up, EMA, gradient accumulation, skipped non-finite updates, and how
the steps are compiled on CPUs (training.xla_cpu_emitters)."""

import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sedd_jax import configs, models, parallel, train_state, train_step
from tests.train_testing import REPO, config


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


LEGACY = {"xla_cpu_use_fusion_emitters": False}


def test_cpu_compiler_options_follow_the_config(tmp_path):
    c = config(tmp_path)                                              # auto, hidden 32: XLA's fusion emitters
    assert c.training.xla_cpu_emitters == "auto" and train_step.cpu_compiler_options(c) == {}
    c.model.hidden_size = train_step.LEGACY_EMITTERS_MIN_WIDTH        # auto from width 128: the legacy emitters
    assert train_step.cpu_compiler_options(c) == LEGACY
    c.training.xla_cpu_emitters = "fusion"
    assert train_step.cpu_compiler_options(c) == {}
    c.model.hidden_size, c.training.xla_cpu_emitters = 32, "legacy"
    assert train_step.cpu_compiler_options(c) == LEGACY
    del c.training["xla_cpu_emitters"]                                # a config saved before the field: auto
    assert train_step.cpu_compiler_options(c) == {}
    c.training.xla_cpu_emitters = "mlir"
    with pytest.raises(ValueError, match=r"training.xla_cpu_emitters='mlir'; choose one of \('auto', 'legacy', "
                                         r"'fusion'\)"):
        configs.validate(c, device_count=1, process_count=1)


def _compiled_step(c):
    mesh = parallel.create_mesh(c)
    _, _, model, optimizer, loss_fn = train_step.training_components(c)
    init_state, abstract_state, shardings = train_state.train_state_layout(c, model, optimizer, mesh, jax.random.key(0))
    step = train_step.compile_train_step(c, model, loss_fn, optimizer, mesh, abstract_state, shardings)
    return step, jax.jit(init_state, out_shardings=shardings)(jax.random.key(0)), mesh


def test_cpu_compiles_pass_the_options_on(tmp_path, monkeypatch):
    monkeypatch.setattr(train_step, "cpu_compiler_options", lambda config: {"xla_no_such_option": True})
    with pytest.raises(Exception, match="No such compile option: 'xla_no_such_option'"):
        _compiled_step(config(tmp_path))


def test_legacy_and_fusion_emitters_compile_the_same_train_step(tmp_path):
    # Width 128, one block: both emitters compile it in seconds. The same update, up to float32 rounding.
    results = []
    for emitters in ("legacy", "fusion"):
        c = config(tmp_path, model__hidden_size=128, model__n_heads=2, training__xla_cpu_emitters=emitters)
        step, state, mesh = _compiled_step(c)
        batch = jax.device_put(jax.random.randint(jax.random.key(2), (8, 32), 0, 28, dtype=jnp.int32),
                               parallel.batch_sharding(mesh))
        for _ in range(2):
            state, metrics = step(state, batch, jax.random.key(3))
        results.append((state, metrics))
    (legacy, m_legacy), (fusion, m_fusion) = results
    assert int(m_legacy["update_skipped"]) == int(m_fusion["update_skipped"]) == 0
    np.testing.assert_allclose(m_legacy["train_loss"], m_fusion["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(m_legacy["grad_norm"], m_fusion["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(legacy.params), jax.tree.leaves(fusion.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


MASKED_POSITIONS_ON_A_MESH = r"""
import json, sys, tempfile, pathlib
import jax, numpy as np
from sedd_jax import parallel, train_state, train_step
from tests.train_testing import config
result = {}
for data, fsdp, accum in ((1, 1, 1), (2, 2, 1), (4, 1, 2)):
    states = {}
    for masked in (True, False):
        c = config(pathlib.Path(tempfile.mkdtemp()), mesh__data=data, mesh__fsdp=fsdp, training__accum=accum,
                   training__masked_positions_only=masked)
        mesh = parallel.create_mesh(c, jax.devices()[:data * fsdp])
        graph, _, model, optimizer, loss_fn = train_step.training_components(c)
        init_state, abstract_state, shardings = train_state.train_state_layout(c, model, optimizer, mesh,
                                                                               jax.random.key(0))
        step = train_step.compile_train_step(c, model, loss_fn, optimizer, mesh, abstract_state, shardings)
        state = jax.jit(init_state, out_shardings=shardings)(jax.random.key(0))
        batch = jax.device_put(np.random.default_rng(0).integers(0, 28, (8, 32), dtype=np.int32),
                               parallel.batch_sharding(mesh))
        for i in range(3):
            state, metrics = step(state, batch, jax.random.key(i))
        states[masked] = (type(loss_fn).__name__, float(metrics["train_loss"]), jax.tree.map(np.asarray, state.params))
    (name, loss, params), (plain_name, plain_loss, plain_params) = states[True], states[False]
    gap = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain_params)))
    result[f"{data}x{fsdp}/{accum}"] = [name, plain_name, loss, plain_loss, gap]
print("RESULT" + json.dumps(result))
"""


def test_masked_positions_train_step_makes_the_whole_networks_updates():
    # The trainer's default for the absorbing graph (the last layers at masked positions only, one group of rows per
    # data shard) against training.masked_positions_only=False, no dropout: three updates of the same parameters
    # on one device, on a (data 2, fsdp 2) mesh and on 4 data shards with 2 micro-batches.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", MASKED_POSITIONS_ON_A_MESH], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert sorted(result) == ["1x1/1", "2x2/1", "4x1/2"]
    for name, plain_name, loss, plain_loss, gap in result.values():
        assert (name, plain_name) == ("MaskedPositionsLoss", "function")
        np.testing.assert_allclose(loss, plain_loss, rtol=1e-5)
        assert gap < 1e-6, result
