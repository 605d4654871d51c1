"""A time-independent network (`model.time_conditioning=False`) and the sampler that reuses its output while a
sequence is unchanged (`get_pc_sampler(..., skip_unchanged=True)`).

The absorbing graph's exact score is time-independent up to 1 / (e^sigma - 1) at masked positions (the only
entries the samplers read), so the closed-form scores of tests/exact_scores.py check the skipping sampler:
it must draw the very samples of the plain sampler, evaluating only the rows that changed.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sedd_jax import configs, graphs, models, noise as noise_lib, official, pretrained, sampling

from . import exact_scores as es
from .conftest import TINY_CHECKPOINT

TOKENS, LENGTH, BATCH, STEPS = 3, 3, 8, 40
P0 = es.random_joint(TOKENS, LENGTH, seed=0)
GRAPH = graphs.get_graph("absorb", TOKENS)
NOISE = noise_lib.get_noise("loglinear", eps=1e-3)
EXACT_SCORE = es.exact_score_fn("absorb", P0)


def _config(**model):
    """A 1-block network over the 28 text8 characters (a tokenizer that needs no files)."""
    c = configs.base_config()
    c.tokens = 28
    c.data.tokenizer = "char"
    c.model.update(dict(hidden_size=32, n_heads=2, n_blocks=1, cond_dim=16, length=16, dropout=0.0,
                        compute_dtype="float32", attention="plain", scan_blocks=False, remat="none"))
    c.model.update(model)
    return c


@functools.lru_cache(maxsize=None)
def _network(time_conditioning: bool) -> pretrained.Pretrained:
    """Random weights (nonzero output and modulation layers, so scores differ between tokens and steps)."""
    config = _config(time_conditioning=time_conditioning)
    model = models.get_model(config)
    params = flax.core.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1,)))["params"])
    leaves, tree = jax.tree.flatten(params)
    params = jax.tree.unflatten(tree, [w + 0.3 * jax.random.normal(jax.random.key(i), w.shape)
                                       for i, w in enumerate(leaves)])
    graph = graphs.get_graph(config.graph.type, config.tokens)
    return pretrained.Pretrained(config=config, params=params, graph=graph, noise=noise_lib.from_config(config),
                                 model=model, path=f"<random time_conditioning={time_conditioning}>")


# ------------------------------------------------------------------------------------------ network

def test_time_independent_network_depends_on_sigma_only_through_the_absorbing_scale():
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, 29)
    sigma_a, sigma_b = jnp.array([0.05, 3.0]), jnp.array([7.0, 0.4])
    shift = (np.log(np.expm1(np.asarray(sigma_b, np.float64))) - np.log(np.expm1(np.asarray(sigma_a, np.float64))))
    own = np.asarray(jax.nn.one_hot(x, 29, dtype=bool))
    for conditioned in (False, True):
        net = _network(conditioned)
        a, b = (np.asarray(net.log_score(x, s), np.float64) for s in (sigma_a, sigma_b))
        assert (a[own] == 0).all() and (b[own] == 0).all()
        difference = (a - b)[~own].reshape(2, -1) - shift[:, None]
        if conditioned:
            assert difference.std(axis=1).min() > 1e-2   # a time-conditioned network's output moves otherwise
        else:
            np.testing.assert_allclose(difference, 0, atol=2e-5)
    # The same parameters either way: checkpoints do not depend on the switch.
    models.check_param_shapes(_network(False).params, models.abstract_params(_network(True).model), "test")


def test_time_independence_needs_the_absorbing_scale():
    for change in (dict(graph="uniform"), dict(scale_by_sigma=False)):
        config = _config(time_conditioning=False, **({} if "graph" in change else change))
        if "graph" in change:
            config.graph.type, config.noise.type, config.model.scale_by_sigma = "uniform", "geometric", False
        with pytest.raises(ValueError, match="time_conditioning=False needs graph.type='absorb' with "
                                             "model.scale_by_sigma=True"):
            models.get_model(config)


def test_configs_without_the_field_are_time_conditioned():
    raw = official.read_json(TINY_CHECKPOINT / "config.json")
    assert "time_conditioning" not in raw["model"]
    assert official.config_from_dict(raw).model.time_conditioning is True
    with pytest.raises(ValueError, match="model.time_conditioning='no' is not valid"):
        official.config_from_dict({**raw, "model": {**raw["model"], "time_conditioning": "no"}})
    # A workdir saved before the field existed resumes with the default, and refuses the other value.
    saved = configs.base_config().to_dict()
    del saved["model"]["time_conditioning"]
    assert configs.config_changes(saved, configs.base_config()) == ({}, {})
    independent = configs.base_config()
    independent.model.time_conditioning = False
    refused, _ = configs.config_changes(saved, independent)
    assert refused == {"model.time_conditioning": (True, False)}


# ------------------------------------------------------------------------------------------ sampler

def _expected_calls(states: np.ndarray, rows_per_call) -> list[int]:
    """The batch sizes of the network calls a skipping run makes, from the states the plain run passed
    through (`[steps + 1, B, L]`): at each of the steps + 1 evaluations (steps 0..steps-1, then the denoiser
    at the last state) n rows changed since the previous one (all at first); they are evaluated in groups of
    rows_per_call, or (None) in one call of the smallest of 1, 2, 4, ..., B rows that holds them."""
    batch = states.shape[1]
    changed = [batch] + [int((states[i] != states[i - 1]).any(axis=1).sum()) for i in range(1, len(states))]
    if rows_per_call is None:
        sizes = [1 << i for i in range(batch.bit_length()) if 1 << i < batch] + [batch]
        return [min(size for size in sizes if size >= n) for n in changed if n]
    return [rows_per_call] * sum(-(-n // rows_per_call) for n in changed)


def _counting(rows: list):
    def counted(fn, x, sigma):
        jax.debug.callback(lambda n: rows.append(int(n)), jnp.int32(x.shape[0]))
        return fn(x, sigma)
    return counted


@pytest.mark.parametrize("predictor, rows_per_call, clamp", [
    ("analytic", None, False), ("euler", None, True), ("analytic", 1, False), ("euler", 3, False),
    ("analytic", BATCH, False)])
def test_skipping_sampler_draws_the_same_samples_from_fewer_rows(predictor, rows_per_call, clamp):
    proj = sampling.get_infill_projector([1], [2]) if clamp else None
    plain = sampling.get_pc_sampler(GRAPH, NOISE, (BATCH, LENGTH), predictor, STEPS, proj_fun=proj,
                                    frames=STEPS + 1)
    skipping = sampling.get_pc_sampler(GRAPH, NOISE, (BATCH, LENGTH), predictor, STEPS, proj_fun=proj,
                                       frames=STEPS + 1, skip_unchanged=True, rows_per_call=rows_per_call)
    key = jax.random.key(3)
    want, states = jax.jit(functools.partial(plain, EXACT_SCORE))(key)
    rows = []
    got, got_states = jax.jit(functools.partial(skipping, functools.partial(_counting(rows), EXACT_SCORE)))(key)
    jax.effects_barrier()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_states, states)
    assert np.asarray(want).max() < TOKENS and (not clamp or (np.asarray(want)[:, 1] == 2).all())
    expected = _expected_calls(np.asarray(states), rows_per_call)
    print(f"{predictor} rows_per_call={rows_per_call}: {sum(rows)} of {BATCH * (STEPS + 1)} rows evaluated")
    assert sorted(rows) == sorted(expected)
    assert sum(expected) < 0.6 * BATCH * (STEPS + 1)
    if rows_per_call is None:
        assert sampling.call_sizes(BATCH) == (1, 2, 4, 8) and len(set(rows)) > 1


def test_skipping_sampler_with_a_time_independent_network():
    net = _network(False)
    assert net.skips_unchanged() and net.skips_unchanged(steps=48, length=16)
    assert not net.skips_unchanged(steps=8, length=16) and net.skips_unchanged(True, steps=8, length=16)
    ids, texts = net.sample(4, 2, 48, prefix="ab")            # skips by default: the same draw
    np.testing.assert_array_equal(ids, net.sample(4, 2, 48, prefix="ab", skip_unchanged=False)[0])
    assert (ids < 28).all() and all(text.startswith("ab") for text in texts)


def test_call_sizes():
    assert [sampling.call_sizes(b) for b in (1, 2, 3, 5, 6, 8, 9)] == [
        (1,), (1, 2), (1, 2, 3), (1, 2, 4, 5), (1, 2, 4, 6), (1, 2, 4, 8), (1, 2, 4, 8, 9)]


def test_skipping_is_refused_where_it_would_be_wrong():
    with pytest.raises(ValueError, match="needs a time-independent network"):
        _network(True).sample(0, 2, 4, skip_unchanged=True)
    assert not _network(True).skips_unchanged()
    uniform = graphs.get_graph("uniform", TOKENS)
    with pytest.raises(ValueError, match="skip_unchanged needs the absorbing graph"):
        sampling.get_pc_sampler(uniform, NOISE, (2, LENGTH), "analytic", 4, skip_unchanged=True)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="rows_per_call must be None or an integer >= 1"):
            sampling.get_pc_sampler(GRAPH, NOISE, (2, LENGTH), "analytic", 4, skip_unchanged=True, rows_per_call=bad)
