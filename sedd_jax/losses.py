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

from sedd_jax import graphs

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

    def sequence_time(key: jax.Array) -> jax.Array:
        return (1 - sampling_eps) * jax.random.uniform(key, (), jnp.float32) + sampling_eps

    def sequence_perturb(key: jax.Array, x0: jax.Array, total_noise: jax.Array) -> jax.Array:
        return graph.sample_transition(key, x0, total_noise)

    def sequence_loss(log_score: jax.Array, total_noise: jax.Array, rate_noise: jax.Array, xt: jax.Array,
                      x0: jax.Array) -> jax.Array:
        """[L, dim], [], [], [L], [L] -> [] weighted score entropy of one sequence."""
        return rate_noise * graph.score_entropy(log_score, total_noise, xt, x0).sum()

    def loss_fn(log_score_fn: LogScoreFn, key: jax.Array, x0: jax.Array, t: jax.Array | None = None,
                perturbed_batch: jax.Array | None = None) -> jax.Array:
        chex.assert_rank(x0, 2)
        batch = x0.shape[0]
        time_key, perturb_key = jax.random.split(key)
        if t is None:
            t = jax.vmap(sequence_time)(jax.random.split(time_key, batch))
        chex.assert_shape(t, (batch,))
        total_noise, rate_noise = noise(t)
        if perturbed_batch is None:
            perturbed_batch = jax.vmap(sequence_perturb)(jax.random.split(perturb_key, batch), x0, total_noise)
        chex.assert_equal_shape([perturbed_batch, x0])
        log_score = log_score_fn(perturbed_batch, total_noise)
        chex.assert_shape(log_score, x0.shape + (graph.dim,))
        return jax.vmap(sequence_loss)(log_score, total_noise, rate_noise, perturbed_batch, x0)

    return loss_fn
