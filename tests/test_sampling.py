"""The samplers against closed forms: the exact concrete score of a small known distribution p0 over
sequences (tests/exact_scores.py) drives `sampling.get_pc_sampler`, and

* at 256 steps the samples follow p0 (total variation < 0.04 with 20,000 samples);
* at 2 and 4 steps they follow a direct float64 transcription of reference §5, propagated exactly as a
  Markov chain over all states (chi-square goodness of fit);
* after the denoiser no MASK remains; clamped tokens never change, and conditional samples follow the
  conditional distribution.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from sedd_jax import graphs, noise as noise_lib, sampling

from . import exact_scores as es

TOKENS, LENGTH, SAMPLES = 3, 3, 20_000


def KEY(seed):
    """Most tests use the "rbg" PRNG: the sampler takes any key type, and rbg compiles ~2x faster on CPU than
    the default threefry (which test_samples_follow_distribution and the infill tests use)."""
    return jax.random.key(seed, impl="rbg")

P0 = es.random_joint(TOKENS, LENGTH, seed=0)
CONFIGS = {  # name -> (graph type, noise)
    "absorb-loglinear": ("absorb", noise_lib.get_noise("loglinear", eps=1e-3)),
    "absorb-geometric": ("absorb", noise_lib.get_noise("geometric", sigma_min=1e-4, sigma_max=20.0)),
    "uniform-geometric": ("uniform", noise_lib.get_noise("geometric", sigma_min=1e-4, sigma_max=20.0)),
    "uniform-loglinear": ("uniform", noise_lib.get_noise("loglinear", eps=1e-3)),
}
# Few-step checks use noise whose first step is well conditioned in float32. With the uniform graph and
# geometric noise from sigma_bar = 20, the scores differ from 1 by ~e^-20, below float32 resolution, while
# the analytic step multiplies those differences by e^(Delta) ~ 5e8: any float32 implementation (the
# reference's bf16 one too) then jumps to a near-uniform state on its first step, unlike exact arithmetic.
FEW_STEP_CONFIGS = ["absorb-loglinear", "absorb-geometric", "uniform-loglinear"]


def state_index(x: np.ndarray, dim: int) -> np.ndarray:
    return (np.asarray(x) * dim ** np.arange(x.shape[-1] - 1, -1, -1)).sum(-1)


def histogram(x: np.ndarray, dim: int) -> np.ndarray:
    return np.bincount(state_index(x, dim), minlength=dim ** x.shape[-1]) / len(x)


@functools.lru_cache(maxsize=None)
def jitted_sampler(config, predictor, steps, batch=SAMPLES, denoise=True, p0_key="joint"):
    graph_type, noise = CONFIGS[config]
    graph = graphs.get_graph(graph_type, TOKENS)
    sampler = sampling.get_pc_sampler(graph, noise, (batch, LENGTH), predictor, steps, denoise=denoise)
    score_fn = es.exact_score_fn(graph_type, P0, shared_sigma=True)
    return jax.jit(functools.partial(sampler, score_fn))


# ------------------------------------------------------------------------- the exact score itself

@pytest.mark.parametrize("graph_type", ["absorb", "uniform"])
def test_kernel_is_the_matrix_exponential(graph_type):
    graph = graphs.get_graph(graph_type, TOKENS)
    rates = np.stack([np.asarray(graph.rate(jnp.asarray(x))) for x in range(graph.dim)], axis=1)
    sigma = 0.7
    want = scipy.linalg.expm(sigma * rates)[:, :TOKENS]
    np.testing.assert_allclose(es.kernel(graph_type, TOKENS, [sigma])[0], want, atol=1e-6)


def test_absorb_score_is_conditional_over_expm1():
    mask = TOKENS
    x = np.array([[1, mask, mask]])
    sigma = 0.3
    got = es.scores("absorb", P0, x, [sigma])[0]
    cond = P0[1].sum(axis=1)  # p(x0_1 = y | x0_0 = 1), unnormalised
    np.testing.assert_allclose(got[1, :TOKENS], cond / cond.sum() / np.expm1(sigma), rtol=1e-10)


# ------------------------------------------------------------------ many steps: follows p0

@pytest.mark.parametrize("config", ["absorb-loglinear", "uniform-geometric"])
@pytest.mark.parametrize("predictor", ["euler", "analytic"])
def test_samples_follow_distribution(config, predictor):
    x = np.asarray(jitted_sampler(config, predictor, 256)(KEY(0) if predictor == "euler" else jax.random.key(0)))
    assert x.shape == (SAMPLES, LENGTH) and x.dtype == np.int32
    assert x.min() >= 0 and x.max() < TOKENS, "a MASK survived the denoiser"
    tv = 0.5 * np.abs(histogram(x, TOKENS) - P0.reshape(-1)).sum()
    print(f"{config} {predictor} 256 steps: TV = {tv:.4f}")
    assert tv < 0.04


# ------------------------------------------------------- few steps: follows the reference algorithm

def _noise64(noise, t):
    """(total, rate) in float64, transcribed from reference §3."""
    if isinstance(noise, noise_lib.LogLinear):
        e = noise.eps
        return -np.log1p(-(1 - e) * t), (1 - e) / (1 - (1 - e) * t)
    total = noise.sigma_min ** (1 - t) * noise.sigma_max ** t
    return total, total * (np.log(noise.sigma_max) - np.log(noise.sigma_min))


def _reference_probs(graph_type, predictor, states, score, dsigma_or_rate, dt=None):
    """Per-position unnormalised next-token probabilities `[S, L, dim]`, transcribed from §2 and §5."""
    n = TOKENS
    dim = score.shape[-1]
    onehot = np.eye(dim)[states]
    absorb = graph_type == "absorb"
    is_mask = (states == n)[..., None] if absorb else None
    if predictor == "euler":
        if absorb:
            transp_rate = np.where(is_mask, np.r_[np.ones(n), 0.0], -onehot)
        else:
            transp_rate = 1.0 / n - onehot
        rate = transp_rate * score
        rate = rate * (1 - onehot)
        rate = rate - onehot * rate.sum(-1, keepdims=True)
        return onehot + dt * dsigma_or_rate * rate
    delta = dsigma_or_rate  # analytic and the denoiser: staggered score times transp_transition
    if absorb:
        stag = np.exp(delta) * score
        stag[..., -1] = score[..., -1] + (1 - np.exp(delta)) * score[..., :-1].sum(-1)
        transp = np.exp(-delta) * onehot + np.where(is_mask, -np.expm1(-delta), 0.0)
    else:
        stag = np.exp(delta) * score + (1 - np.exp(delta)) * score.sum(-1, keepdims=True) / n
        off = -np.expm1(-delta) / n
        transp = off * (1 - onehot) + onehot * (1 - (n - 1) * off)
    return stag * transp


def reference_distribution(config, predictor, steps, eps=1e-5, denoise=True, p0=P0, proj=None):
    """Exact output distribution over all dim**L states of the §5 algorithm (float64), with the exact score
    of p0. Negative entries of a probability vector never win the race, so they are dropped."""
    graph_type, noise = CONFIGS[config]
    dim = es.dim_of(graph_type, TOKENS)
    states = es.all_sequences(dim, LENGTH)
    num_states = len(states)
    if graph_type == "absorb":
        dist = np.zeros(num_states)
        dist[state_index(np.full((1, LENGTH), TOKENS), dim)] = 1.0
    else:
        dist = np.full(num_states, 1.0 / num_states)
    proj_matrix = np.eye(num_states)
    if proj is not None:
        proj_matrix = np.eye(num_states)[state_index(proj(states.copy()), dim)]

    def step_matrix(probs):
        probs = np.clip(probs, 0, None)
        probs = probs / probs.sum(-1, keepdims=True)
        matrix = np.ones((num_states, num_states))
        for l in range(LENGTH):
            matrix *= probs[:, l, states[:, l]]
        return matrix

    timesteps = np.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    for i in range(steps):
        t = timesteps[i]
        dist = dist @ proj_matrix
        total, rate = _noise64(noise, t)
        score = es.scores(graph_type, p0, states, np.full(num_states, total))
        if predictor == "euler":
            probs = _reference_probs(graph_type, "euler", states, score, rate, dt)
        else:
            delta = total - _noise64(noise, t - dt)[0]
            probs = _reference_probs(graph_type, "analytic", states, score, delta)
        dist = dist @ step_matrix(probs)
    if denoise:
        dist = dist @ proj_matrix
        total = _noise64(noise, eps)[0]
        score = es.scores(graph_type, p0, states, np.full(num_states, total))
        probs = _reference_probs(graph_type, "analytic", states, score, total)
        if graph_type == "absorb":
            probs[..., -1] = 0.0
        dist = dist @ step_matrix(probs)
    return dist @ proj_matrix


def chi_square_pvalue(samples_hist, expected, n):
    observed = samples_hist * n
    expected = expected * n
    assert observed[expected == 0].sum() == 0, "samples in states the reference algorithm cannot reach"
    big = expected >= 5
    obs = np.r_[observed[big], observed[~big].sum()]
    exp = np.r_[expected[big], expected[~big].sum()]
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    return scipy.stats.chi2.sf(stat, len(exp) - 1)


@pytest.mark.parametrize("config", FEW_STEP_CONFIGS)
@pytest.mark.parametrize("predictor", ["euler", "analytic"])
@pytest.mark.parametrize("steps", [2, 4])
def test_few_steps_follow_reference_algorithm(config, predictor, steps):
    graph_type, _ = CONFIGS[config]
    dim = es.dim_of(graph_type, TOKENS)
    x = np.asarray(jitted_sampler(config, predictor, steps)(KEY(steps)))
    assert x.max() < TOKENS, "a MASK survived the denoiser"
    want = reference_distribution(config, predictor, steps)
    pvalue = chi_square_pvalue(histogram(x, dim), want, SAMPLES)
    print(f"{config} {predictor} {steps} steps: chi-square p = {pvalue:.3g}")
    assert pvalue > 1e-4


@pytest.mark.parametrize("config", ["absorb-geometric", "uniform-loglinear"])
def test_few_steps_without_denoiser_follow_reference_algorithm(config):
    graph_type, _ = CONFIGS[config]
    dim = es.dim_of(graph_type, TOKENS)
    x = np.asarray(jitted_sampler(config, "euler", 2, denoise=False)(KEY(7)))
    want = reference_distribution(config, "euler", 2, denoise=False)
    assert chi_square_pvalue(histogram(x, dim), want, SAMPLES) > 1e-4


def test_reference_check_has_power():
    """The few-step check distinguishes the predictors (where they differ) and the step counts."""
    for config in ("absorb-geometric", "uniform-loglinear"):
        euler, analytic = (reference_distribution(config, p, 2) for p in ("euler", "analytic"))
        tv_predictors = 0.5 * np.abs(euler - analytic).sum()
        tv_steps = 0.5 * np.abs(reference_distribution(config, "analytic", 4) - analytic).sum()
        print(f"{config}: TV(euler, analytic) = {tv_predictors:.3f}, TV(2 steps, 4 steps) = {tv_steps:.3f}")
        assert min(tv_predictors, tv_steps) > 0.02  # vs ~0.01 Monte-Carlo noise at 20,000 samples
    # with loglinear noise the absorb predictors coincide exactly (reference §5.3: dt sigma = dt / t)
    euler, analytic = (reference_distribution("absorb-loglinear", p, 2) for p in ("euler", "analytic"))
    np.testing.assert_allclose(euler, analytic, atol=1e-12)


# --------------------------------------------------------------------------------- compile once

def test_sampler_traces_score_once_and_is_jittable():
    traces = []

    def score_fn(x, sigma):
        traces.append(x.shape)
        return es.exact_score_fn("absorb", P0, shared_sigma=True)(x, sigma)

    graph = graphs.get_graph("absorb", TOKENS)
    sampler = sampling.get_pc_sampler(graph, CONFIGS["absorb-loglinear"][1], (8, LENGTH), "analytic", 50)
    out = jax.jit(functools.partial(sampler, score_fn))(KEY(0))
    assert out.shape == (8, LENGTH)
    assert len(traces) == 2  # the scan body and the denoiser, not once per step
    none = sampling.get_pc_sampler(graph, CONFIGS["absorb-loglinear"][1], (8, LENGTH), "none", 3, denoise=False)
    assert (np.asarray(none(score_fn, jax.random.key(0))) == TOKENS).all()


def test_jit_of_sampler_with_partial_score_equals_unjitted():
    """What the docs say: `jax.jit(sampler)(jax.tree_util.Partial(score_fn), key)`; the bound arguments of a
    Partial are traced (a new scale reuses the compiled sampler; jit keys on the Partial's function object)."""
    graph, noise = graphs.get_graph("absorb", TOKENS), CONFIGS["absorb-loglinear"][1]
    sampler = sampling.get_pc_sampler(graph, noise, (8, LENGTH), "analytic", 6)
    jitted = jax.jit(sampler)
    scaled_score = functools.partial(_scaled_exact_score, "absorb")
    score_fn = jax.tree_util.Partial(scaled_score, jnp.float32(1.0))
    np.testing.assert_array_equal(jitted(score_fn, KEY(2)), sampler(score_fn, KEY(2)))
    assert jitted(jax.tree_util.Partial(scaled_score, jnp.float32(3.0)), KEY(2)).shape == (8, LENGTH)
    assert jitted._cache_size() == 1


def test_frames_record_the_reverse_process_in_the_loop():
    graph, noise = graphs.get_graph("absorb", TOKENS), CONFIGS["absorb-loglinear"][1]
    score_fn = es.exact_score_fn("absorb", P0, shared_sigma=True)
    proj = sampling.get_infill_projector([0], [2])
    steps, batch = 6, 64
    plain = sampling.get_pc_sampler(graph, noise, (batch, LENGTH), "analytic", steps, proj_fun=proj)
    tokens = np.asarray(jax.jit(functools.partial(plain, score_fn))(KEY(4)))
    for k in (4, steps + 1):
        framed = sampling.get_pc_sampler(graph, noise, (batch, LENGTH), "analytic", steps, proj_fun=proj, frames=k)
        out, frames = jax.jit(functools.partial(framed, score_fn))(KEY(4))
        frames = np.asarray(frames)
        assert frames.shape == (k, batch, LENGTH) and frames.dtype == np.int32
        np.testing.assert_array_equal(out, tokens)  # recording does not change the draw
        np.testing.assert_array_equal(frames[-1], tokens)
        assert (frames[:, :, 0] == 2).all()  # the clamped token is in every frame
        assert (frames[0, :, 1:] == graph.tokens).all()  # the limit sample: all MASK but the clamp
        # absorbing: a position, once unmasked, keeps its token in every later frame
        for before, after in zip(frames[:-1], frames[1:]):
            unmasked = before != graph.tokens
            np.testing.assert_array_equal(after[unmasked], before[unmasked])
    np.testing.assert_array_equal(sampling.frame_steps(4, steps), [0, 2, 4, 6])
    # all steps + 1 states: frame i is the state after step i, so masks only ever decrease, one step at a time
    assert (np.diff((frames == graph.tokens).sum(axis=(1, 2))) <= 0).all()
    ids, framed_ids = sampling.sample_sequences(score_fn, graph, noise, KEY(5), 4, LENGTH, steps, prefix_ids=[1],
                                                frames=3)
    assert framed_ids.shape == (3, 4, LENGTH) and isinstance(framed_ids, np.ndarray)
    np.testing.assert_array_equal(framed_ids[-1], ids)
    np.testing.assert_array_equal(ids, sampling.sample_sequences(score_fn, graph, noise, KEY(5), 4, LENGTH, steps,
                                                                 prefix_ids=[1]))


def test_sample_sequences_caches_compiled_sampler():
    score_fn = es.exact_score_fn("absorb", P0, shared_sigma=True)
    graph, noise = graphs.get_graph("absorb", TOKENS), CONFIGS["absorb-loglinear"][1]
    run = functools.partial(sampling.sample_sequences, score_fn, graph, noise, batch_size=4, length=LENGTH, steps=5)
    first = run(jax.random.key(0), prefix_ids=[1])
    size = sampling._sample_jit._cache_size()
    second = run(jax.random.key(1), prefix_ids=[2])
    third = run(3, prefix_ids=[0])  # an int seed works too
    assert sampling._sample_jit._cache_size() == size
    assert (first[:, 0] == 1).all() and (second[:, 0] == 2).all() and (third[:, 0] == 0).all()
    np.testing.assert_array_equal(run(jax.random.key(0), prefix_ids=[1]), first)  # deterministic in the key


# ------------------------------------------------------------------------------------- infilling

INFILL_CASES = {
    # name -> (prefix, suffix, extra positions, extra ids)
    "middle": ([], [], [1], [2]),
    "prefix+suffix": ([0], [1], [], []),
    "prefix": ([2, 0], [], [], []),
}


@pytest.mark.parametrize("graph_type", ["absorb", "uniform"])
@pytest.mark.parametrize("case", list(INFILL_CASES))
def test_infill_follows_conditional(graph_type, case):
    prefix, suffix, positions, ids = INFILL_CASES[case]
    all_positions, all_ids = sampling.prefix_suffix_positions(LENGTH, prefix, suffix)
    all_positions = np.r_[all_positions, positions].astype(int)
    all_ids = np.r_[all_ids, ids].astype(int)
    target = es.conditional(P0, all_positions, all_ids)
    # absorb: the unconditional score is exactly the conditional one (paper Eq. 22) at unmasked clamps;
    # uniform: clamped tokens are clean, so the exact score is that of the conditional distribution.
    score_p0 = P0 if graph_type == "absorb" else target
    graph = graphs.get_graph(graph_type, TOKENS)
    noise = CONFIGS["absorb-loglinear" if graph_type == "absorb" else "uniform-geometric"][1]
    x = sampling.sample_sequences(es.exact_score_fn(graph_type, score_p0, shared_sigma=True), graph, noise, jax.random.key(3),
                                  SAMPLES, LENGTH, 64, "analytic", prefix, suffix, positions=positions, ids=ids)
    assert (x[:, all_positions] == all_ids).all()
    tv = 0.5 * np.abs(histogram(x, TOKENS) - target.reshape(-1)).sum()
    print(f"infill {graph_type} {case}: TV = {tv:.4f}")
    assert tv < 0.04


@pytest.mark.parametrize("graph_type", ["absorb", "uniform"])
def test_clamped_positions_never_change(graph_type):
    """Every state the score function sees, and the output, carries the clamped tokens."""
    seen = []
    positions, ids = np.array([0, 2]), np.array([2, 1])
    exact = es.exact_score_fn(graph_type, es.conditional(P0, positions, ids))

    def score_fn(x, sigma):
        jax.debug.callback(lambda x: seen.append(np.asarray(x)[:, positions].copy()), x)
        return exact(x, sigma)

    graph = graphs.get_graph(graph_type, TOKENS)
    noise = CONFIGS["absorb-loglinear" if graph_type == "absorb" else "uniform-geometric"][1]
    proj = sampling.get_infill_projector(positions, ids)
    # euler on the uniform graph does move clamped tokens inside a step; the projector puts them back
    predictor = "euler" if graph_type == "uniform" else "analytic"
    sampler = sampling.get_pc_sampler(graph, noise, (64, LENGTH), predictor, 8, proj_fun=proj)
    x = np.asarray(jax.jit(functools.partial(sampler, score_fn))(KEY(1)))
    jax.effects_barrier()
    assert len(seen) == 9  # 8 steps and the denoiser
    assert all((clamped == ids).all() for clamped in seen)
    assert (x[:, positions] == ids).all()


def test_clamped_sampler_follows_reference_algorithm():
    """4 analytic steps with a middle clamp match the transcription with its projector."""
    graph = graphs.get_graph("uniform", TOKENS)
    positions, ids = np.array([1]), np.array([0])
    proj = sampling.get_infill_projector(positions, ids)
    cond = es.conditional(P0, positions, ids)
    sampler = sampling.get_pc_sampler(graph, CONFIGS["uniform-loglinear"][1], (SAMPLES, LENGTH), "analytic", 4,
                                      proj_fun=proj)
    score_fn = es.exact_score_fn("uniform", cond, shared_sigma=True)
    x = np.asarray(jax.jit(functools.partial(sampler, score_fn))(KEY(5)))

    def np_proj(states):
        states[:, positions] = ids
        return states

    want = reference_distribution("uniform-loglinear", "analytic", 4, p0=cond, proj=np_proj)
    assert chi_square_pvalue(histogram(x, TOKENS), want, SAMPLES) > 1e-4


# ------------------------------------------------------------------------------------ bad input

def test_bad_input_errors():
    graph, noise = graphs.get_graph("absorb", TOKENS), CONFIGS["absorb-loglinear"][1]
    score_fn = es.exact_score_fn("absorb", P0, shared_sigma=True)
    run = functools.partial(sampling.sample_sequences, score_fn, graph, noise, jax.random.key(0), 2, LENGTH)
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            run(steps)
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            sampling.get_pc_sampler(graph, noise, (2, LENGTH), "euler", steps)
    with pytest.raises(ValueError, match=r"unknown predictor 'tweedie'.*choose one of"):
        run(4, "tweedie")
    with pytest.raises(ValueError, match="unknown predictor"):
        sampling.get_pc_sampler(graph, noise, (2, LENGTH), "Euler", 4)
    with pytest.raises(ValueError, match=r"prefix \(2 tokens\) \+ suffix \(2 tokens\) = 4 tokens do not fit .* "
                                         r"length 3; shorten"):
        run(4, "analytic", [0, 1], [1, 2])
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 3\)"):
        run(4, "analytic", [TOKENS])  # MASK is not a prompt token
    with pytest.raises(ValueError, match="unknown categorical sampling method"):
        run(4, method="float64")
    with pytest.raises(ValueError, match="positions must lie in"):
        run(4, positions=[3], ids=[0])
    with pytest.raises(ValueError, match="overlap"):
        run(4, "analytic", [0], positions=[0], ids=[1])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        sampling.sample_sequences(score_fn, graph, noise, 0, 0, LENGTH, 4)
    with pytest.raises(ValueError, match="eps"):
        run(4, eps=0.0)
    with pytest.raises(ValueError, match="distinct"):
        sampling.get_infill_projector([1, 1], [0, 0])
    for frames in (1, 6, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"frames must be 0 \(none\) or an integer from 2 to steps \+ 1 = 5"):
            run(4, frames=frames)
    with pytest.raises(ValueError, match="frames must be 0"):
        sampling.get_pc_sampler(graph, noise, (2, LENGTH), "euler", 4, frames=9)


def test_shared_sigma_score_matches_per_row_score():
    x = jnp.asarray(es.all_sequences(TOKENS + 1, LENGTH))
    sigma = jnp.full((x.shape[0],), 0.4)
    for graph_type in ("absorb", "uniform"):
        xs = x if graph_type == "absorb" else jnp.minimum(x, TOKENS - 1)
        shared, per_row = (jax.jit(es.exact_score_fn(graph_type, P0, shared_sigma=s)) for s in (True, False))
        np.testing.assert_allclose(shared(xs, sigma), per_row(xs, sigma), rtol=1e-5)


def _scaled_exact_score(graph_type, scale, x, sigma):
    return scale * es.exact_score_fn(graph_type, P0, shared_sigma=True)(x, sigma)


def test_fresh_partials_hit_the_cache():
    """Pretrained.sample builds `Partial(functools.partial(f, model), params)` on every call; the compiled
    sampler must still be reused (the bound arrays are traced arguments)."""
    graph, noise = graphs.get_graph("absorb", TOKENS), CONFIGS["absorb-loglinear"][1]

    def run(scale):
        fn = jax.tree_util.Partial(functools.partial(_scaled_exact_score, "absorb"), jnp.float32(scale))
        return sampling.sample_sequences(fn, graph, noise, KEY(0), 4, LENGTH, 3)

    run(1.0)
    size = sampling._sample_jit._cache_size()
    run(2.0)
    assert sampling._sample_jit._cache_size() == size


SHARDED_SCRIPT = r"""
import functools, jax, numpy as np
from sedd_jax import graphs, noise as noise_lib, sampling
from tests import exact_scores as es
assert jax.device_count() == 4
p0 = es.random_joint(3, 3, seed=0)
graph, noise = graphs.get_graph("uniform", 3), noise_lib.get_noise("geometric")
score_fn = es.exact_score_fn("uniform", p0, shared_sigma=True)
sharded = sampling.sample_sequences(score_fn, graph, noise, 0, 8, 3, 4, "euler", prefix_ids=[1])
assert sampling._shard_batch(8) and not sampling._shard_batch(6)
plain = sampling.get_pc_sampler(graph, noise, (8, 3), "euler", 4, proj_fun=sampling.prefix_suffix_projector(3, [1]))
single = jax.jit(functools.partial(plain, score_fn))(jax.random.key(0))
np.testing.assert_array_equal(sharded, np.asarray(single))
print("ok")
"""


def test_batch_sharded_over_devices_matches_single_device():
    import os
    import pathlib
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = pathlib.Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
