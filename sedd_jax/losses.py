"""The denoising score-entropy (DWDSE) loss (reference §4.1).

For one sequence x0 `[L]`: draw t ~ U[sampling_eps, 1], perturb x_t ~ p_{t|0}(. | x0) over total noise
sigma_bar(t), and weight the per-position score entropy by the rate sigma(t):

    loss(x0) = sigma(t) * sum_l score_entropy(log s(x_t, sigma_bar)_l, sigma_bar, x_t[l], x0[l])

an unbiased (up to the [0, sampling_eps] sliver) Monte-Carlo estimate of L_DWDSE(x0) >= -log p0(x0) - KL
(prior), in nats per sequence. The per-sequence pieces (time, perturbation, weighting) are written once for
one sequence and `jax.vmap`-ed over the batch; the score function is called once on the whole batch so a
network sees a normal batch (and independent dropout masks per sample).
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from sedd_jax import graphs, positions

LogScoreFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x int[B, L], sigma float[B]) -> float[B, L, dim]


def get_loss_fn(noise, graph: graphs.Graph, train: bool, sampling_eps: float = 1e-3):
    """Returns `loss_fn(log_score_fn, key, x0, t=None, perturbed_batch=None) -> float32[B]` (nats/sequence).

    log_score_fn: any function (x int[B, L], sigma float[B]) -> log score [B, L, graph.dim]; for a network in
      training mode, bind its dropout rng beforehand. `train` is kept for the reference's signature: the
      loss itself is the same in both modes (the caller's score function decides about dropout).
    key: PRNG key for t and the perturbation. x0: int[B, L] clean tokens in [0, graph.tokens).
    t: optional float[B] times; perturbed_batch: optional int[B, L] x_t (then nothing is sampled for it).
    """
    del train
    draw = _draw_fn(noise, graph, sampling_eps)

    def sequence_loss(log_score: jax.Array, total_noise: jax.Array, rate_noise: jax.Array, xt: jax.Array,
                      x0: jax.Array) -> jax.Array:
        """[L, dim], [], [], [L], [L] -> [] weighted score entropy of one sequence."""
        return rate_noise * graph.score_entropy(log_score, total_noise, xt, x0).sum()

    def loss_fn(log_score_fn: LogScoreFn, key: jax.Array, x0: jax.Array, t: jax.Array | None = None,
                perturbed_batch: jax.Array | None = None) -> jax.Array:
        total_noise, rate_noise, perturbed_batch = draw(key, x0, t, perturbed_batch)
        log_score = log_score_fn(perturbed_batch, total_noise)
        chex.assert_shape(log_score, x0.shape + (graph.dim,))
        return jax.vmap(sequence_loss)(log_score, total_noise, rate_noise, perturbed_batch, x0)

    return loss_fn


def _draw_fn(noise, graph: graphs.Graph, sampling_eps: float):
    """`draw(key, x0 int[B, L], t=None, perturbed_batch=None) -> (total noise float[B], rate float[B], x_t
    int[B, L])`: the loss's times and perturbation, drawn from `key` where not given."""

    def sequence_time(key: jax.Array) -> jax.Array:
        return (1 - sampling_eps) * jax.random.uniform(key, (), jnp.float32) + sampling_eps

    def draw(key: jax.Array, x0: jax.Array, t: jax.Array | None = None, perturbed_batch: jax.Array | None = None):
        chex.assert_rank(x0, 2)
        batch = x0.shape[0]
        time_key, perturb_key = jax.random.split(key)
        if t is None:
            t = jax.vmap(sequence_time)(jax.random.split(time_key, batch))
        chex.assert_shape(t, (batch,))
        total_noise, rate_noise = noise(t)
        if perturbed_batch is None:
            perturbed_batch = jax.vmap(graph.sample_transition)(jax.random.split(perturb_key, batch), x0,
                                                                 total_noise)
        chex.assert_equal_shape([perturbed_batch, x0])
        return total_noise, rate_noise, perturbed_batch

    return draw


class MaskedPositionsLoss:
    """The absorbing graph's DWDSE loss and its gradient, with the network's last layers run at masked positions
    only.

    The absorbing score entropy is 0 wherever x_t is not MASK (`graphs.Absorbing.score_entropy`), and about half
    of the positions are not. `get_loss_fn`'s loss with a `SEDD` network spends the last block's feed-forward
    half, the output layer and the loss there all the same. This one runs `SEDD.trunk` on the whole batch, then
    `SEDD.head` (the rest) and the loss in chunks of 1/`chunks` of each group of rows' positions, masked ones
    first, for as many chunks as the group with the most masked positions needs (a `lax.fori_loop`: one
    compiled chunk, whatever the number). Each chunk takes its gradient within the loop (head parameters summed,
    the trunk's outputs' cotangents scattered back), so only one chunk's intermediates (its logits among them)
    exist at a time; the gradient then flows through the trunk by `jax.vjp`. The loss and gradient equal
    `get_loss_fn`'s up to float32 rounding (dropout masks aside: the head draws its own per chunk).

    `__call__(trunk_fn, head_fn, head_params, params, key, x0, groups) -> (mean loss over the batch, grads)`:
      trunk_fn(params, x_t, sigma) -> (per_position, per_row) and head_fn(params, per_position, per_row, sigma,
      indices, chunk) -> log score: `SEDD.trunk` and `SEDD.head` applied with those params (head_fn's chunk: an
      int32 index, for its dropout key). head_params: the top-level entries of params that head_fn uses
      (`SEDD.head_param_names`). key, x0 int[B, L], t, perturbed_batch: as for `get_loss_fn`'s loss (the same
      key draws the same times and x_t). groups: S, dividing B (the trainer: one group per data shard).

    `per_sequence(trunk_fn, head_fn, params, key, x0, groups, t=None, perturbed_batch=None) -> float32[B]`: each
      sequence's loss, forward only (evaluation: `likelihood.draw_losses`), `get_loss_fn`'s values up to float32
      rounding.
    """

    def __init__(self, noise, graph: graphs.Graph, sampling_eps: float = 1e-3, chunks: int = 16):
        if not graph.absorb:
            raise ValueError("the loss at masked positions only needs the absorbing graph (graph.type='absorb'): "
                             "under the uniform graph every position has a loss")
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        self.graph, self.chunks = graph, chunks
        self.draw = _draw_fn(noise, graph, sampling_eps)

    def __call__(self, trunk_fn, head_fn, head_params: tuple[str, ...], params, key: jax.Array, x0: jax.Array,
                 groups: int, t: jax.Array | None = None, perturbed_batch: jax.Array | None = None):
        batch = x0.shape[0]
        draws = self.draw(key, x0, t, perturbed_batch)
        order, chunk, runs = self._layout(draws[2], groups)
        (per_position, per_row), trunk_vjp = jax.vjp(lambda p: trunk_fn(p, draws[2], draws[0]), params)
        head = {name: params[name] for name in head_params}

        def chunk_loss(head, per_position_at, per_row, chosen, start, index):
            return self._weighted_entropy(head_fn, {**params, **head}, per_position_at, per_row, chosen, start,
                                          index, draws, x0).sum() / batch

        def add_chunk(index, carry):
            loss, head_grads, position_cotangents, row_cotangents = carry
            start, chosen, at = _chunk(order, chunk, index, per_position)
            value, (d_head, d_at, d_rows) = jax.value_and_grad(chunk_loss, argnums=(0, 1, 2))(
                head, at, per_row, chosen, start, index)
            return (loss + value, jax.tree.map(jnp.add, head_grads, d_head),
                    jax.tree.map(lambda c, d: positions.scatter_add(c, chosen, d), position_cotangents, d_at),
                    jax.tree.map(jnp.add, row_cotangents, d_rows))

        zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
        loss, head_grads, position_cotangents, row_cotangents = jax.lax.fori_loop(
            0, runs, add_chunk, (jnp.zeros((), jnp.float32), zeros(head), zeros(per_position), zeros(per_row)))
        (grads,) = trunk_vjp((position_cotangents, row_cotangents))
        return loss, {**grads, **{name: jax.tree.map(jnp.add, grads[name], head_grads[name]) for name in head}}

    def per_sequence(self, trunk_fn, head_fn, params, key: jax.Array, x0: jax.Array, groups: int,
                     t: jax.Array | None = None, perturbed_batch: jax.Array | None = None) -> jax.Array:
        """The loss of each sequence, float32 `[B]` (nats), forward only: `get_loss_fn`'s loss with the network's
        last layers at masked positions only (evaluation; `likelihood.draw_losses`). Same arguments as
        `__call__` less head_params."""
        batch, length = x0.shape
        draws = self.draw(key, x0, t, perturbed_batch)
        order, chunk, runs = self._layout(draws[2], groups)
        per_position, per_row = trunk_fn(params, draws[2], draws[0])

        def add_chunk(index, totals):
            start, chosen, at = _chunk(order, chunk, index, per_position)
            terms = self._weighted_entropy(head_fn, params, at, per_row, chosen, start, index, draws, x0)
            return totals.at[positions.rows(chosen, batch, length)].add(terms)

        return jax.lax.fori_loop(0, runs, add_chunk, jnp.zeros((batch,), jnp.float32))

    def _layout(self, xt: jax.Array, groups: int):
        """How x_t `[B, L]`'s positions are taken, chunk by chunk: (order int32 `[S, chunks x chunk]`: each group's
        positions, masked ones first, padded with position 0; chunk: positions of each group per chunk; runs
        int32 `[]`: the chunks that hold every masked position)."""
        batch, length = xt.shape
        if batch % groups:
            raise ValueError(f"{batch} rows do not split into {groups} equal groups")
        size = batch // groups * length
        chunk = -(-size // self.chunks)
        order, most = positions.selected_first(xt == self.graph.mask_id, groups)
        order = jnp.pad(order, ((0, 0), (0, self.chunks * chunk - size)))
        return order, chunk, -(-most // chunk)

    def _weighted_entropy(self, head_fn, params, per_position_at, per_row, chosen, start, index, draws, x0):
        """sigma(t) x score entropy float32 `[S, chunk]` at the positions chosen `[S, chunk]` (the order's entries
        from `start` on; 0 at its padding), from the trunk's outputs there (per_position_at) and per row."""
        total_noise, rate_noise, xt = draws
        batch, length = x0.shape
        rows = positions.rows(chosen, batch, length)
        sigma, xt_at = total_noise[rows], positions.gather(xt, chosen)
        log_score = head_fn(params, per_position_at, jax.tree.map(lambda u: u[rows], per_row), sigma, xt_at,
                            index)                                                            # [S, chunk, dim]
        entropy = self.graph.score_entropy(log_score, sigma, xt_at, positions.gather(x0, chosen))
        real = start + jnp.arange(chosen.shape[1]) < batch // chosen.shape[0] * length
        return jnp.where(real, rate_noise[rows], 0.0) * entropy


def _chunk(order: jax.Array, chunk: int, index: jax.Array, per_position):
    """Chunk `index` of the order `[S, chunks x chunk]`: (its first entry's index, the positions chosen `[S, chunk]`,
    per_position's values there `[S, chunk, ...]`)."""
    start = index * chunk
    chosen = jax.lax.dynamic_slice_in_dim(order, start, chunk, axis=1)
    return start, chosen, jax.tree.map(lambda u: positions.gather(u, chosen), per_position)
