"""Samplers (reference §5): Euler and analytic (Tweedie) predictors, the final denoiser, infilling
projectors, and one jitted loop.

A score function is any `score_fn(x: int32[B, L], sigma: float32[B]) -> float[B, L, dim]` returning the
concrete score (positive ratios p_t(x with x_l := y) / p_t(x)); for a network, exp of its log-score.

    sampler = get_pc_sampler(graph, noise, (B, L), "analytic", steps)
    tokens = sampler(score_fn, key)                             # int32 [B, L]
    tokens = jax.jit(sampler)(jax.tree_util.Partial(score_fn), key)   # the same, compiled

`jax.jit` takes arrays and pytrees, not functions: pass the score function as a `jax.tree_util.Partial`
(a pytree: `Partial(fn, params)` makes params a traced argument; `pretrained.Pretrained.score_fn` is one),
or close over it: `jax.jit(lambda key: sampler(score_fn, key))`. With `frames=k` the sampler also returns
the state at k evenly spaced steps (the reverse process, `[k, B, L]`), recorded inside the same loop.

The loop is a `lax.scan` over steps (one trace, one compile). Time runs on the grid
`linspace(1, eps, steps + 1)`; step i uses t_i and dt = (1 - eps) / steps, with key `fold_in(key, i)`.
Before every step, before the denoiser and once at the end, `proj_fun` clamps the known tokens.

`sample_sequences` is the validated, cached entry point used by `pretrained.Pretrained.sample` and the CLI.
To keep large parameters out of the compiled program, pass a `jax.tree_util.Partial(fn, params)` as
`score_fn` (params are then traced arguments, not constants); any other callable works too and is cached by
identity (bound methods by their object and function).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sedd_jax import categorical

PREDICTORS = ("euler", "analytic", "none")

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
ProjFn = Callable[[jax.Array], jax.Array]


# --------------------------------------------------------------------------------------------- checks

def check_predictor(predictor: str) -> str:
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {PREDICTORS} "
                         "('analytic' is the reference's default for sampling, 'euler' its training snapshots)")
    return predictor


def check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (number of predictor steps), got {steps!r}")
    return int(steps)


def _check_eps(eps) -> float:
    eps = float(eps)
    if not 0 < eps < 1:
        raise ValueError(f"eps (the last time of the grid linspace(1, eps, steps + 1)) must be in (0, 1), got {eps}")
    return eps


# ----------------------------------------------------------------------------------------- predictors

def euler_step(graph, noise, score_fn: ScoreFn, key, x, t, dt, method="unbiased"):
    """tau-leaping with the reverse rate: x' ~ Cat(one_hot(x) + dt sigma(t) R(x, s)). t: `[B]`."""
    total_noise, rate_noise = noise(t)
    score = score_fn(x, total_noise)
    rate = (dt * rate_noise)[:, None, None] * graph.reverse_rate(x, score)
    return graph.sample_rate(key, x, rate, method=method)


def analytic_step(graph, noise, score_fn: ScoreFn, key, x, t, dt, method="unbiased"):
    """Tweedie tau-leaping (paper Eq. 19): probs = expm(-Delta Q) s  *  row x of expm(Delta Q),
    Delta = sigma_bar(t) - sigma_bar(t - dt)."""
    curr_sigma = noise(t)[0]
    next_sigma = noise(t - dt)[0]
    dsigma = curr_sigma - next_sigma
    score = score_fn(x, curr_sigma)
    probs = graph.staggered_score(score, dsigma) * graph.transp_transition(x, dsigma)
    return categorical.sample_categorical(key, probs, method=method)


def none_step(graph, noise, score_fn, key, x, t, dt, method="unbiased"):
    del graph, noise, score_fn, key, t, dt, method
    return x


PREDICTOR_FNS = {"euler": euler_step, "analytic": analytic_step, "none": none_step}


def denoise_step(graph, noise, score_fn: ScoreFn, key, x, t, method="unbiased"):
    """The final Tweedie step from sigma_bar(t) to 0; for absorb the MASK column is dropped, so no MASK
    survives. Samples (no argmax), as the reference."""
    sigma = noise(t)[0]
    score = score_fn(x, sigma)
    probs = graph.staggered_score(score, sigma) * graph.transp_transition(x, sigma)
    if graph.absorb:
        probs = probs[..., :-1]
    return categorical.sample_categorical(key, probs, method=method)


# ------------------------------------------------------------------------------------------ projectors

def _identity(x):
    return x


def get_infill_projector(positions, ids) -> ProjFn:
    """proj_fun(x: int[B, L]) -> x with x[:, positions] = ids (the same for every row).

    positions: `[K]` ints in [0, L) (distinct); ids: `[K]` token ids (numpy, list or a traced array).
    """
    positions = np.asarray(positions, np.int64).reshape(-1)
    if len(np.unique(positions)) != len(positions):
        raise ValueError(f"infill positions must be distinct, got {positions.tolist()}")
    if (positions < 0).any():
        raise ValueError(f"infill positions must be >= 0, got {positions.tolist()}")
    if np.shape(ids) != positions.shape:
        raise ValueError(f"infill ids {np.shape(ids)} and positions {positions.shape} differ in length")
    if len(positions) == 0:
        return _identity
    max_position = int(positions.max())

    def proj_fun(x):
        if x.shape[-1] <= max_position:
            raise ValueError(f"infill position {max_position} is outside sequences of length {x.shape[-1]}")
        return x.at[..., positions].set(jnp.asarray(ids, x.dtype))

    return proj_fun


def prefix_suffix_positions(length: int, prefix_ids=None, suffix_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, ids) int32 `[K]` clamping `prefix_ids` at the start and `suffix_ids` at the end."""
    prefix = _as_ids(prefix_ids, "prefix")
    suffix = _as_ids(suffix_ids, "suffix")
    if len(prefix) + len(suffix) > length:
        raise ValueError(
            f"prefix ({len(prefix)} tokens) + suffix ({len(suffix)} tokens) = {len(prefix) + len(suffix)} tokens do "
            f"not fit in a sequence of length {length}; shorten the prefix or suffix")
    positions = np.concatenate([np.arange(len(prefix)), np.arange(length - len(suffix), length)]).astype(np.int32)
    return positions, np.concatenate([prefix, suffix]).astype(np.int32)


def prefix_suffix_projector(length: int, prefix_ids=None, suffix_ids=None) -> ProjFn:
    """Projector clamping `prefix_ids` at positions 0.. and `suffix_ids` at the last positions."""
    return get_infill_projector(*prefix_suffix_positions(length, prefix_ids, suffix_ids))


def _as_ids(ids, name: str) -> np.ndarray:
    if ids is None:
        return np.zeros((0,), np.int64)
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros((0,), np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got {ids!r:.80}")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------------------------- sampler

def _progress_printer(steps: int):
    def report(i):
        print(f"sampling step {int(i) + 1}/{steps}", file=sys.stderr, flush=True)
    return report


def check_frames(frames, steps: int) -> int:
    """frames: 0 (none) or 2 <= frames <= steps + 1 (the states a run passes through)."""
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not (
            frames == 0 or 2 <= frames <= steps + 1):
        raise ValueError(f"frames must be 0 (none) or an integer from 2 to steps + 1 = {steps + 1} (the first state, "
                         f"the final sample and states between), got {frames!r}")
    return int(frames)


def frame_steps(frames: int, steps: int) -> np.ndarray:
    """The states recorded as frames: int `[frames]`, evenly spaced in 0..steps (state 0: the projected limit
    sample before the first step; state i: after predictor step i; state `steps`: the final sample)."""
    return np.round(np.linspace(0, steps, frames)).astype(np.int32)


def get_pc_sampler(graph, noise, batch_dims, predictor: str, steps: int, denoise: bool = True, eps: float = 1e-5,
                   proj_fun: Optional[ProjFn] = None, *, method: str = "unbiased", progress_every: int = 0,
                   batch_sharding: Optional[jax.sharding.Sharding] = None, frames: int = 0,
                   skip_unchanged: bool = False, rows_per_call: Optional[int] = None):
    """Returns `sampler(score_fn, key) -> int32[B, L]`, a pure jittable function (to `jax.jit` it, pass
    score_fn as a `jax.tree_util.Partial`: see the module docstring).

    graph, noise: from `graphs.get_graph` / `noise.get_noise`; batch_dims: (B, L); predictor: "euler",
    "analytic" or "none"; steps >= 1 predictor steps on `linspace(1, eps, steps + 1)`; denoise: finish
    with the denoiser at t = eps; proj_fun: `int[B, L] -> int[B, L]` clamp (e.g. `get_infill_projector`);
    method: categorical draw, "unbiased" or "reference"; progress_every: if > 0, print the step to stderr
    every this many steps (a host callback); batch_sharding: a sharding of `[B, L]` (e.g. the batch axis over a
    mesh) the state is constrained to, so each device samples its share of the batch; frames: if k > 0 (2 to
    steps + 1), the sampler returns `(tokens int32[B, L], frames int32[k, B, L])`, the projected state at the
    `frame_steps(k, steps)` (the first frame is the limit sample, all MASK for absorb but clamped tokens;
    the last is `tokens`), recorded in the loop.

    skip_unchanged (absorb only): the caller's statement that score_fn is time-independent up to the absorbing
    sigma scale, score(x, sigma) = r(x) / (e^sigma - 1) off x's own entries (a network trained with
    `model.time_conditioning=False`; the exact absorbing score has this form at the masked positions, the
    only ones the absorbing samplers read). The network is then evaluated only on the sequences that changed
    since their last evaluation, and the other rows' scores are r / (e^sigma - 1) from the cache: the same
    sampler, the same draws, fewer network calls. rows_per_call None (default): each step makes one call on
    the changed rows padded to the next of `call_sizes(B)` (1, 2, 4, ..., B: log2(B) + 1 compiled sizes);
    an int k: calls of exactly k rows (one compiled size; 1 does no work on unchanged rows). With the
    log-linear schedule a sequence of L tokens is unchanged by a step with probability about e^(-L / steps),
    so this pays when steps >= L (`skipping_pays`). For a time-conditioned network the reused scores would be
    wrong: do not set it.
    """
    predictor_fn = PREDICTOR_FNS[check_predictor(predictor)]
    steps = check_steps(steps)
    frames = check_frames(frames, steps)
    eps = _check_eps(eps)
    categorical.check_method(method)
    batch_dims = tuple(int(d) for d in batch_dims)
    if len(batch_dims) != 2 or min(batch_dims) < 1:
        raise ValueError(f"batch_dims must be (batch_size, length) with both >= 1, got {batch_dims}")
    proj = proj_fun if proj_fun is not None else _identity
    progress_every = int(progress_every)
    report = _progress_printer(steps) if progress_every > 0 else None

    def constrain(x):
        return x if batch_sharding is None else jax.lax.with_sharding_constraint(x, batch_sharding)

    if skip_unchanged:
        if not graph.absorb:
            raise ValueError("skip_unchanged needs the absorbing graph: only its score factorises into a "
                             "time-independent part and a sigma scale")
        if rows_per_call is not None and (isinstance(rows_per_call, bool) or rows_per_call < 1
                                          or not isinstance(rows_per_call, (int, np.integer))):
            raise ValueError(f"rows_per_call must be None or an integer >= 1, got {rows_per_call!r}")
        if rows_per_call is not None:
            rows_per_call = min(int(rows_per_call), batch_dims[0])
        scores = functools.partial(_scores_reusing, graph.dim, rows_per_call)
    reuse_in_steps = skip_unchanged and predictor != "none"

    # frame_slot[s]: the frame that records state s, or -1 (the final sample goes into the last frame).
    frame_slot = np.full(steps + 1, -1, np.int32)
    frame_slot[frame_steps(frames, steps)] = np.arange(frames, dtype=np.int32)

    def record(recorded, x, state):
        """recorded `[k, B, L]` with the frame of `state` (if any) set to x."""
        slot = jnp.asarray(frame_slot)[state]
        index = jnp.maximum(slot, 0)
        return recorded.at[index].set(jnp.where(slot >= 0, x, recorded[index]))

    def sampler(score_fn: ScoreFn, key: jax.Array):
        timesteps = jnp.linspace(1.0, eps, steps + 1, dtype=jnp.float32)
        dt = (1.0 - eps) / steps
        x = constrain(graph.sample_limit(jax.random.fold_in(key, steps + 1), *batch_dims).astype(jnp.int32))
        recorded = jnp.zeros((frames, *batch_dims), jnp.int32)
        if frames:
            recorded = recorded.at[0].set(proj(x))
        # skip_unchanged: (the state each row was last evaluated at, -1 before the first call; its ratios r(x)).
        cache = ((jnp.full(batch_dims, -1, jnp.int32), jnp.zeros((*batch_dims, graph.dim), jnp.float32))
                 if skip_unchanged else ())

        def step_score_fn(cache, x, t):
            """(the score function a step uses, the cache after it)."""
            if not skip_unchanged:
                return score_fn, cache
            score, cache = scores(score_fn, cache, x, noise(t)[0])
            return (lambda x, sigma: score), cache

        def body(carry, i):
            x, recorded, cache = carry
            t = jnp.full(batch_dims[:1], timesteps[i], jnp.float32)
            x = proj(x)
            fn, cache = step_score_fn(cache, x, t) if reuse_in_steps else (score_fn, cache)
            x = predictor_fn(graph, noise, fn, jax.random.fold_in(key, i), x, t, dt, method)
            if report is not None:
                jax.lax.cond((i + 1) % progress_every == 0, lambda: jax.debug.callback(report, i), lambda: None)
            x = constrain(x.astype(jnp.int32))
            if frames:
                recorded = record(recorded, proj(x), i + 1)
            return (x, recorded, cache), None

        (x, recorded, cache), _ = jax.lax.scan(body, (x, recorded, cache), jnp.arange(steps, dtype=jnp.int32))
        if denoise:
            x = proj(x)
            t = jnp.full(batch_dims[:1], timesteps[-1], jnp.float32)
            fn, _ = step_score_fn(cache, x, t)
            x = denoise_step(graph, noise, fn, jax.random.fold_in(key, steps), x, t, method)
        x = proj(x).astype(jnp.int32)
        if frames:
            return x, recorded.at[-1].set(x)
        return x

    return sampler


def skipping_pays(steps: int, length: int) -> bool:
    """Whether `skip_unchanged` is worth its cache for sequences of `length` tokens in `steps` steps: a step
    leaves a sequence unchanged with probability about e^(-length / steps), at least 1/e when steps >= length
    (bench/README.md: 1.15x at steps = length, 2-4x at steps = 4-8 x length, 0.92x at steps = length / 2)."""
    return steps >= length


def call_sizes(batch: int) -> tuple[int, ...]:
    """The batch sizes a skipping sampler (rows_per_call=None) calls the network with: powers of two below
    `batch`, then `batch` (1, 2, 4, 8 for 8; 1, 2, 4, 6 for 6)."""
    return tuple(1 << i for i in range(max(batch - 1, 0).bit_length()) if 1 << i < batch) + (batch,)


def _scores_reusing(dim: int, rows_per_call: Optional[int], score_fn: ScoreFn, cache, x, sigma):
    """score_fn(x, sigma) `[B, L, dim]` float32 for a time-independent absorbing score function, evaluating it
    only on the rows of x (int32 `[B, L]`) that differ from the cache's.

    rows_per_call None: one call on the changed rows, padded with unchanged ones to the next of
    `call_sizes(B)` (one compiled network per size; only the chosen one runs); an int k: calls of k rows
    until every changed row is done. cache: (seen int32 `[B, L]`: the state each row was last evaluated at;
    ratios float32 `[B, L, dim]`: r = score * (e^sigma - 1) there, which does not depend on sigma). Returns
    (scores, the updated cache); the entry at each row's own token is 1, as a network's exp(0)."""
    seen, ratios = cache
    batch = x.shape[0]
    changed = jnp.any(x != seen, axis=1)
    order = jnp.argsort(~changed, stable=True)                  # the changed rows first
    count = changed.sum()

    def evaluate(rows, ratios):
        score = score_fn(x[rows], sigma[rows]).astype(jnp.float32)
        return ratios.at[rows].set(score * jnp.expm1(sigma[rows])[:, None, None])

    if rows_per_call is None:
        sizes = call_sizes(batch)
        branches = [lambda ratios: ratios] + [functools.partial(lambda n, ratios: evaluate(order[:n], ratios), n)
                                              for n in sizes]
        # 0 when nothing changed, else 1 + the index of the smallest size holding every changed row
        choice = jnp.where(count > 0, 1 + jnp.searchsorted(jnp.asarray(sizes), count), 0)
        ratios = jax.lax.switch(choice, branches, ratios)
    else:
        def evaluate_group(group, ratios):
            slots = group * rows_per_call + jnp.arange(rows_per_call)
            rows = order[jnp.minimum(slots, batch - 1)]
            rows = jnp.where(slots < count, rows, rows[0])       # a last, short group repeats its first row
            # Tied to the loop counter: with one group the rows would not depend on it, and XLA would hoist
            # the network out of the loop and run it on every step.
            rows, _ = jax.lax.optimization_barrier((rows, group))
            return evaluate(rows, ratios)

        ratios = jax.lax.fori_loop(0, (count + rows_per_call - 1) // rows_per_call, evaluate_group, ratios)
    own = jax.nn.one_hot(x, dim, dtype=jnp.bool_)
    scores = jnp.where(own, jnp.ones((), jnp.float32), ratios / jnp.expm1(sigma)[:, None, None])
    return scores, (x, ratios)


# ------------------------------------------------------------------------------ validated entry point

def _callable_key(fn):
    """What a jit cache should key a score function on: functools.partial objects (which compare by
    identity) by their function and hashable arguments, other hashable callables by themselves, the rest by
    identity."""
    if type(fn).__name__ == "_HashableCallableShim" and hasattr(fn, "fun"):
        fn = fn.fun  # jax.tree_util.Partial wraps a functools.partial func in this identity-keyed shim
    if isinstance(fn, functools.partial):
        try:
            key = ("partial", _callable_key(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
            hash(key)
            return key
        except TypeError:
            pass
    try:
        hash(fn)
        return ("callable", fn)
    except TypeError:
        return ("id", id(fn))


class _CacheKeyed:
    """A callable compared and hashed by `_callable_key`, so that e.g. `Partial(partial(f, model), params)`
    built afresh on every call still hits the compiled sampler. Holds `fn`, so an id key is never reused."""

    def __init__(self, fn):
        self.fn = fn
        self.key = _callable_key(fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _CacheKeyed) and (other.fn is self.fn or other.key == self.key)


def _as_pytree_score_fn(score_fn) -> jax.tree_util.Partial:
    """score_fn as a pytree: the bound arguments of a `jax.tree_util.Partial` (e.g. params) are traced leaves,
    the function is static and keyed by `_callable_key`."""
    if isinstance(score_fn, jax.tree_util.Partial):
        return jax.tree_util.Partial(_CacheKeyed(score_fn.func), *score_fn.args, **score_fn.keywords)
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x: int[B, L], sigma: float[B]) -> float[B, L, dim], got "
                        f"{type(score_fn).__name__}")
    return jax.tree_util.Partial(_CacheKeyed(score_fn))


@functools.partial(jax.jit, static_argnames=("graph", "noise", "batch_dims", "predictor", "steps", "denoise", "eps",
                                             "method", "positions", "progress_every", "shard_batch",
                                             "frames", "skip_unchanged", "rows_per_call"))
def _sample_jit(score_fn, key, clamp_ids, *, graph, noise, batch_dims, predictor, steps, denoise, eps, method,
                positions, progress_every, shard_batch, frames, skip_unchanged, rows_per_call):
    proj = get_infill_projector(np.asarray(positions, np.int32), clamp_ids) if positions else None
    sharding = None
    if shard_batch:
        sharding = jax.sharding.NamedSharding(_batch_mesh(), jax.sharding.PartitionSpec("batch", None))
    sampler = get_pc_sampler(graph, noise, batch_dims, predictor, steps, denoise=denoise, eps=eps, proj_fun=proj,
                             method=method, progress_every=progress_every, batch_sharding=sharding, frames=frames,
                             skip_unchanged=skip_unchanged, rows_per_call=rows_per_call)
    return sampler(score_fn, key)


def _batch_mesh() -> jax.sharding.Mesh:
    """The 1-D mesh ("batch") over all devices that a sharded sampler splits its batch over."""
    return jax.sharding.Mesh(np.array(jax.devices()), ("batch",))


def _shard_batch(batch_size: int) -> bool:
    """Spread the batch over this process's devices when there are several and they divide it evenly."""
    count = jax.device_count()
    return count > 1 and jax.process_count() == 1 and batch_size % count == 0


def _as_key(key) -> jax.Array:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


def sample_sequences(score_fn: ScoreFn, graph, noise, key, batch_size: int, length: int, steps: int,
                     predictor: str = "analytic", prefix_ids=None, suffix_ids=None, *, denoise: bool = True,
                     eps: float = 1e-5, method: str = "unbiased", positions=None, ids=None,
                     progress_every: int = 0, frames: int = 0, skip_unchanged: bool = False,
                     rows_per_call: Optional[int] = None):
    """Samples `batch_size` sequences of `length` tokens: int32 numpy `[batch_size, length]`; with `frames=k`
    (2 to steps + 1), also the reverse process: `(tokens, frames int32 numpy [k, batch_size, length])`, the
    state at `frame_steps(k, steps)` (see `get_pc_sampler`).

    score_fn: `(x: int32[B, L], sigma: float32[B]) -> float[B, L, graph.dim]` positive ratios (a
    `jax.tree_util.Partial` keeps its bound arguments, e.g. params, out of the compiled program).
    key: a PRNG key or an int seed. prefix_ids / suffix_ids: token ids clamped at the start / end;
    positions + ids: further tokens clamped at arbitrary positions. Repeated calls with the same shapes and
    settings reuse one compiled sampler (prompt ids are traced, so new prompts of the same lengths do too).
    With several local devices that divide batch_size, each samples its share of the batch.
    skip_unchanged, rows_per_call: reuse a time-independent network's output while a sequence is unchanged
    (absorb only; see `get_pc_sampler`).
    """
    check_predictor(predictor)
    steps = check_steps(steps)
    frames = check_frames(frames, steps)
    eps = _check_eps(eps)
    categorical.check_method(method)
    for name, value in (("batch_size", batch_size), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    clamp_positions, clamp_ids = prefix_suffix_positions(int(length), prefix_ids, suffix_ids)
    if positions is not None or ids is not None:
        extra_positions = _as_ids(positions, "positions")
        extra_ids = _as_ids(ids, "ids")
        if extra_positions.shape != extra_ids.shape:
            raise ValueError(f"positions ({len(extra_positions)}) and ids ({len(extra_ids)}) differ in length")
        if len(extra_positions) and (extra_positions.min() < 0 or extra_positions.max() >= length):
            raise ValueError(f"positions must lie in [0, {length}), got {extra_positions.tolist()}")
        clamp_positions = np.concatenate([clamp_positions, extra_positions]).astype(np.int32)
        clamp_ids = np.concatenate([clamp_ids, extra_ids]).astype(np.int32)
        if len(np.unique(clamp_positions)) != len(clamp_positions):
            raise ValueError("positions overlap each other or the prefix/suffix; clamp each position once")
    if len(clamp_ids) and (clamp_ids.min() < 0 or clamp_ids.max() >= graph.tokens):
        bad = clamp_ids[(clamp_ids < 0) | (clamp_ids >= graph.tokens)]
        raise ValueError(f"token ids {bad[:8].tolist()} are outside the vocabulary [0, {graph.tokens}) of the "
                         "checkpoint's graph; tokenize the prompt with the checkpoint's tokenizer")
    shard_batch = _shard_batch(int(batch_size))
    # the mesh in context lets kernels that run per shard (splash attention's shard_map) see the batch split
    with jax.set_mesh(_batch_mesh()) if shard_batch else contextlib.nullcontext():
        out = _sample_jit(_as_pytree_score_fn(score_fn), _as_key(key), jnp.asarray(clamp_ids, jnp.int32),
                          graph=graph, noise=noise, batch_dims=(int(batch_size), int(length)), predictor=predictor,
                          steps=steps, denoise=bool(denoise), eps=eps, method=method,
                          positions=tuple(int(p) for p in clamp_positions), progress_every=int(progress_every),
                          shard_batch=shard_batch, frames=frames, skip_unchanged=bool(skip_unchanged),
                          rows_per_call=rows_per_call)
    out = jax.tree.map(lambda a: np.asarray(a, np.int32), out)
    if progress_every:
        jax.effects_barrier()  # flush the progress callbacks before returning
    return out
