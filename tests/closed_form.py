"""Closed-form objects for testing the diffusion math without a network.

A small known distribution p0 over all sequences of length L on `tokens` symbols; its exact concrete score
under a graph's forward process, computed from the graph's own `transition` (itself checked against
matrix exponentials in test_graphs.py).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg


def rate_matrix(graph) -> np.ndarray:
    """Dense Q `[dim, dim]` float64 with column x = graph.rate(x)."""
    return np.stack([np.asarray(graph.rate(jnp.asarray(x)), np.float64) for x in range(graph.dim)], axis=1)


def expm_rate(graph, sigma: float) -> np.ndarray:
    """expm(sigma Q) `[dim, dim]`; column x is p_{t|0}(. | x)."""
    return scipy.linalg.expm(sigma * rate_matrix(graph))


def random_distribution(tokens: int, length: int, seed: int = 0, concentration: float = 0.5):
    """All tokens**length sequences `[S, L]` int32 and Dirichlet probabilities `[S]` float64."""
    seqs = np.array(list(itertools.product(range(tokens), repeat=length)), np.int32)
    probs = np.random.default_rng(seed).dirichlet(np.full(len(seqs), concentration))
    return seqs, probs


def marginal_probs(graph, seqs, probs, x, sigma):
    """p_t(x) and the single-site numerators, for x `[B, L]`, sigma `[B]`.

    Returns (p_x `[B]`, numerators `[B, L, dim]` = p_t(x with x_l := y))."""
    kernel = graph.transition(jnp.asarray(seqs)[None], jnp.asarray(sigma)[:, None, None])  # [B, S, L, dim]
    k_x = jnp.take_along_axis(kernel, x[:, None, :, None], axis=-1)[..., 0]  # [B, S, L]
    weights = jnp.asarray(probs, jnp.float32)[None]
    p_x = (weights * jnp.prod(k_x, axis=-1)).sum(-1)
    numerators = []
    for l in range(x.shape[1]):
        others = jnp.prod(jnp.delete(k_x, l, axis=-1), axis=-1)  # [B, S]
        numerators.append(jnp.einsum("bs,bsy->by", weights * others, kernel[:, :, l]))
    return p_x, jnp.stack(numerators, axis=1)


def exact_log_score_fn(graph, seqs, probs):
    """log s(x, sigma)_{l, y} = log p_t(x_l := y) - log p_t(x): `[B, L]`, `[B]` -> `[B, L, dim]`."""

    def log_score(x, sigma):
        p_x, numerators = marginal_probs(graph, seqs, probs, x, sigma)
        return jnp.log(numerators) - jnp.log(p_x)[:, None, None]

    return jax.jit(log_score)
