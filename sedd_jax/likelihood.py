"""Monte-Carlo DWDSE likelihood bounds of fixed sequences (reference §4.2; docs/evaluation.md).

For a clean sequence x0 `[L]`, the paper's bound (Thm 3.6) is
    -log p_theta(x0) <= L_DWDSE(x0) + KL(p_{T|0}(. | x0) || p_base),
    L_DWDSE(x0) = int_0^1 E_{x_t ~ p_{t|0}(.|x0)} sigma(t) sum_l score_entropy_l dt.
`losses.get_loss_fn` gives one unbiased draw of L_DWDSE (t ~ U[eps, 1], as the reference: the [0, eps]
sliver is left out and the 1/(1 - eps) Jacobian is not applied). Here K draws per sequence are averaged:

  t_grid="iid":        t_k = eps + (1 - eps) u_k,              u_k ~ U[0, 1) independent
  t_grid="stratified": t_k = eps + (1 - eps) (k + u_k) / K,    one draw in each of K equal strata

Both are unbiased for the same integral. Every random number of draw k of sequence b is a function of
(key, b, k) only, `fold_in(fold_in(key, b), k)`, so results do not depend on the batch layout, the batch size
or the number of devices.

Standard errors of the per-sequence mean m_b = mean_k y_bk (y: per-draw loss, nats per sequence):
  iid:        var(m_b) ~ s_b^2 / K                      (s_b: sample std of the K draws, ddof=1)
  stratified: var(m_b) = (1/K^2) sum_k sigma_k^2 (sigma_k^2: the variance within stratum k, one draw each).
              Consecutive strata are grouped in triples (a, b, c) and each of the three gets
              sigma^2 ~ (y_a - 2 y_b + y_c)^2 / 6, unbiased when the mean loss is linear in t across the
              triple (second differences cancel the trend that stratification removed); one or two strata
              left over get (y_j - y_j')^2 / 2 from the last two draws. K = 1 gives NaN.
The Monte-Carlo standard error of the mean over N sequences is sqrt(sum_b var(m_b)) / N (draws of different
sequences are independent).

The prior term KL(p_{T|0}(.|x0) || p_base) does not depend on x0 for these graphs (`prior_kl_per_token`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sedd_jax import losses

T_GRIDS = ("iid", "stratified")
BATCH_AXIS = "batch"

# (params, x int32[B, L], sigma float32[B]) -> log score float[B, L, dim]
ParamLogScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def check_settings(mc_samples: int, t_grid: str, sampling_eps: float) -> None:
    if int(mc_samples) < 1:
        raise ValueError(f"the number of Monte-Carlo samples must be >= 1, got {mc_samples}")
    if t_grid not in T_GRIDS:
        raise ValueError(f"unknown t grid {t_grid!r}; choose one of {', '.join(T_GRIDS)}")
    if not 0 <= sampling_eps < 1:
        raise ValueError(f"sampling eps must be in [0, 1), got {sampling_eps}")


def draw_times(key: jax.Array, mc_samples: int, t_grid: str, sampling_eps: float) -> jax.Array:
    """Times float32 `[K]` of one sequence; `key` is that sequence's key (draw k uses fold_in(key, k))."""
    draw_keys = jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.arange(mc_samples))
    u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (), jnp.float32))(draw_keys)
    if t_grid == "stratified":
        u = (jnp.arange(mc_samples, dtype=jnp.float32) + u) / mc_samples
    return sampling_eps + (1 - sampling_eps) * u


def draw_losses(log_score_fn: ParamLogScoreFn | None, graph, noise, mc_samples: int, *, t_grid: str = "iid",
                sampling_eps: float = 1e-3, trunk_and_head=None, groups: int = 1, position_chunks: int = 16):
    """Returns the pure `f(params, x0 int32[B, L], ids int32[B], key) -> float32[B, K]`: K draws of the DWDSE
    loss (nats per sequence) of each row; row b's randomness is fold_in(key, ids[b]) (ids: e.g. block
    indices). The K draws run in a `lax.scan`, one network call on `[B, L]` per draw. Jit it with the
    shardings at hand (`make_draw_losses_fn`, or the trainer's eval step).

    trunk_and_head (absorbing graph; instead of log_score_fn): the network as `models.trunk_and_head` gives it,
    evaluated by `losses.MaskedPositionsLoss.per_sequence`: its last layers and the loss run at masked positions
    only, in chunks of 1/position_chunks of each of `groups` groups of rows (one per device the rows are split
    over). The same values up to float32 rounding, in less time and memory."""
    check_settings(mc_samples, t_grid, sampling_eps)
    if trunk_and_head is None:
        whole = losses.get_loss_fn(noise, graph, train=False, sampling_eps=sampling_eps)
        loss_fn = lambda params, key, x0, t, xt: whole(lambda x, sigma: log_score_fn(params, x, sigma), key, x0,
                                                       t=t, perturbed_batch=xt)
    else:
        masked = losses.MaskedPositionsLoss(noise, graph, sampling_eps, chunks=position_chunks)
        loss_fn = lambda params, key, x0, t, xt: masked.per_sequence(*trunk_and_head, params, key, x0, groups, t=t,
                                                                     perturbed_batch=xt)

    def draws(params, x0, ids, key):
        row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)                    # [B]
        times = jax.vmap(lambda k: draw_times(k, mc_samples, t_grid, sampling_eps))(row_keys)  # [B, K]
        total_noise_all = noise(times)[0]                                               # [B, K]

        def one_draw(_, k):
            draw_keys = jax.vmap(lambda rk: jax.random.fold_in(jax.random.fold_in(rk, k), 1))(row_keys)
            t = times[:, k]
            xt = jax.vmap(graph.sample_transition)(draw_keys, x0, total_noise_all[:, k])
            value = loss_fn(params, key, x0, t, xt)
            return None, value

        _, values = jax.lax.scan(one_draw, None, jnp.arange(mc_samples))                 # [K, B]
        return values.T.astype(jnp.float32)

    return draws


def make_draw_losses_fn(log_score_fn: ParamLogScoreFn | None, graph, noise, mc_samples: int, *,
                        t_grid: str = "iid", sampling_eps: float = 1e-3, mesh: Mesh | None = None,
                        trunk_and_head=None):
    """`draw_losses` jitted (once per shape); with a `mesh` (1-D, axis "batch"), rows are split over its
    devices (B must be a multiple of the mesh size) and params are replicated. trunk_and_head: as for
    `draw_losses`, one group of rows per device."""
    draws = draw_losses(log_score_fn, graph, noise, mc_samples, t_grid=t_grid, sampling_eps=sampling_eps,
                        trunk_and_head=trunk_and_head, groups=1 if mesh is None else mesh.devices.size)
    if mesh is None:
        return jax.jit(draws)
    rows = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    whole = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(draws, in_shardings=(whole, rows, rows, whole), out_shardings=rows)

    def draw_on_mesh(*args):
        with jax.set_mesh(mesh):  # for kernels that run per shard (splash attention's shard_map)
            return jitted(*args)

    return draw_on_mesh


def local_mesh() -> Mesh:
    """A 1-D mesh ("batch") over this process's devices."""
    return Mesh(np.array(jax.local_devices()), (BATCH_AXIS,))


def run_draws(draw_fn, params, x0: np.ndarray, ids: np.ndarray, key, batch_size: int, multiple: int = 1,
              on_batch: Callable[[int], None] | None = None, mesh: Mesh | None = None) -> np.ndarray:
    """Applies `draw_fn` to rows of `x0` `[N, L]` in batches of `batch_size` (rounded up to a multiple of
    `multiple`, e.g. the device count); the last batch is padded with copies of its first row, so every call
    has the same shape. Returns float64 `[N, K]`. `on_batch(rows_done)` is called after each batch.
    `mesh`: the `make_draw_losses_fn` mesh; inputs are placed on it first (needed in a multi-process run)."""
    put_rows = put_whole = lambda a: a
    if mesh is not None:
        rows_sharding, whole = NamedSharding(mesh, PartitionSpec(BATCH_AXIS)), NamedSharding(mesh, PartitionSpec())
        put_rows, put_whole = (lambda a: jax.device_put(a, rows_sharding)), (lambda a: jax.device_put(a, whole))
        params, key = put_whole(params), put_whole(key)
    batch = int(math.ceil(max(1, int(batch_size)) / multiple) * multiple)
    n = len(x0)
    out = []
    for start in range(0, n, batch):
        rows = np.asarray(x0[start:start + batch], np.int32)
        row_ids = np.asarray(ids[start:start + batch], np.int32)
        real = len(rows)
        if real < batch:
            rows = np.concatenate([rows, np.repeat(rows[:1], batch - real, 0)])
            row_ids = np.concatenate([row_ids, np.repeat(row_ids[:1], batch - real, 0)])
        values = np.asarray(draw_fn(params, put_rows(rows), put_rows(row_ids), key), np.float64)[:real]
        out.append(values)
        if on_batch is not None:
            on_batch(start + real)
    return np.concatenate(out) if out else np.zeros((0, 0))


def mean_variance(draws: np.ndarray, t_grid: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean `[N]` and estimated variance of that mean `[N]` from draws `[N, K]` (see module doc)."""
    draws = np.asarray(draws, np.float64)
    n, k = draws.shape
    mean = draws.mean(axis=1)
    if k < 2:
        return mean, np.full(n, np.nan)
    if t_grid == "iid":
        return mean, draws.var(axis=1, ddof=1) / k
    if t_grid != "stratified":
        raise ValueError(f"unknown t grid {t_grid!r}")
    triples = k // 3 * 3
    triple = draws[:, :triples].reshape(n, -1, 3)                                       # [N, K // 3, 3]
    total = 3 * ((triple[..., 0] - 2 * triple[..., 1] + triple[..., 2]) ** 2 / 6).sum(axis=1)
    if k > triples:  # 1 or 2 strata left over
        total += (k - triples) * (draws[:, -2] - draws[:, -1]) ** 2 / 2
    return mean, total / k**2


def summarize(draws: np.ndarray, length: int, t_grid: str) -> dict:
    """Dataset statistics from per-block draws `[N, K]` (nats per block of `length` tokens)."""
    mean, var = mean_variance(draws, t_grid)
    n = len(mean)
    nats = float(mean.mean()) / length
    mc_se = float(math.sqrt(var.sum()) / n) / length
    across = float(mean.std(ddof=1) / math.sqrt(n)) / length if n > 1 else float("nan")
    return dict(nats_per_token=nats, mc_stderr_nats_per_token=mc_se, across_blocks_stderr_nats_per_token=across,
                blocks=int(n), tokens=int(n * length))


def prior_kl_per_token(graph, noise, graph_type: str) -> tuple[float, str]:
    """KL(p_{1|0}(. | x0_l) || p_base) per position (nats) and the base it is measured against.

    uniform: p_base uniform over the N tokens (the sampler's prior); closed form, the same for every x0.
    absorb: the sampler's prior is all-MASK, against which the KL is infinite (x_1 keeps x0_l with
    probability a = exp(-sigma_bar(1)) > 0); reported against the leaky base that draws MASK with probability
    1 - a and a uniform token otherwise (the paper's "leak"): KL = a log N.
    """
    tokens = int(graph.tokens)
    a = float(np.exp(-float(noise(jnp.float32(1.0))[0])))
    if graph_type == "absorb":
        return a * math.log(tokens), (f"absorb: leaky base, MASK with prob 1 - a, else a uniform token; "
                                      f"a = exp(-sigma_bar(1)) = {a:.3g}")
    stay = a + (1 - a) / tokens
    move = (1 - a) / tokens
    kl = stay * math.log(stay * tokens) + ((tokens - 1) * move * math.log(move * tokens) if move > 0 else 0.0)
    return kl, f"uniform: base uniform over {tokens} tokens; a = exp(-sigma_bar(1)) = {a:.3g}"


def sequence_bounds(log_score_fn: ParamLogScoreFn | None, params, graph, noise, sequences, *, mc_samples: int,
                    seed: int = 0, t_grid: str = "iid", sampling_eps: float = 1e-3, batch_size: int = 8,
                    draw_fn=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence DWDSE bounds (nats, prior term excluded) `[N]` and their Monte-Carlo standard errors `[N]`.

    sequences: int `[N, L]` array or a list of id lists (lengths may differ: each length is evaluated, and
    compiled, separately). Sequence i's randomness is fold_in(key(seed), i). `draw_fn`: a
    `make_draw_losses_fn` result over `local_mesh()` to reuse (else one is built from log_score_fn).
    """
    check_settings(mc_samples, t_grid, sampling_eps)
    rows = [np.asarray(s, np.int32).reshape(-1) for s in sequences]
    if not rows:
        return np.zeros((0,)), np.zeros((0,))
    if any(len(r) == 0 for r in rows):
        raise ValueError("cannot score an empty sequence")
    mesh = local_mesh()
    if draw_fn is None:
        draw_fn = make_draw_losses_fn(log_score_fn, graph, noise, int(mc_samples), t_grid=t_grid,
                                      sampling_eps=sampling_eps, mesh=mesh)
    bounds, stderrs = np.zeros(len(rows)), np.zeros(len(rows))
    key = jax.random.key(int(seed))
    for length in sorted({len(r) for r in rows}):
        index = np.array([i for i, r in enumerate(rows) if len(r) == length])
        draws = run_draws(draw_fn, params, np.stack([rows[i] for i in index]), index, key, batch_size,
                          multiple=mesh.devices.size, mesh=mesh)
        mean, var = mean_variance(draws, t_grid)
        bounds[index], stderrs[index] = mean, np.sqrt(var)
    return bounds, stderrs
