"""Closed-form concrete scores of a small known distribution, for testing samplers and losses without a
network.

p0 is a joint distribution over all sequences of length L on N tokens, stored as an array of shape
(N,) * L (entries may be zero, e.g. a conditional distribution). The forward process noises each position
independently with the per-token kernel T(sigma)[y, x0] = p_{t|0}(y | x0), written here in closed form
(independently of sedd_jax.graphs):
  absorb  (dim N + 1, MASK = N): T = e^-sigma I  +  (1 - e^-sigma) e_MASK 1^T
  uniform (dim N):               T = e^-sigma I  +  (1 - e^-sigma) / N 1 1^T
so p_t = p0 contracted with T on every axis, and the concrete score of x at position l, token y is
p_t(x with x_l := y) / p_t(x). For absorb at a masked position this is
p0(x0_l = y | unmasked tokens of x) / (e^sigma - 1).

API (`xp` is numpy or jax.numpy; the numpy path runs in float64):
  all_sequences(n, length) -> int[n**length, length]   (row-major order, state index = sum x_l n^(L-1-l))
  random_joint(tokens, length, seed, concentration) -> float64 (tokens,)*length, sums to 1
  conditional(p0, positions, ids) -> p0 restricted to x[positions] == ids, renormalised
  kernel(graph_type, tokens, sigma, xp) -> [B, dim, N] for sigma [B]
  marginal(graph_type, p0, sigma, xp) -> p_t [B, dim**L] (flattened, row-major)
  scores(graph_type, p0, x, sigma, xp) -> [B, L, dim]
  exact_score_fn(graph_type, p0, shared_sigma=False) -> jittable score_fn(x: int[B, L], sigma: float[B]) -> float32[B, L, dim]
  exact_log_score_fn(graph_type, p0) -> log of the above (the model's convention; entry at x_l is 0)
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np


def dim_of(graph_type: str, tokens: int) -> int:
    return tokens + 1 if graph_type == "absorb" else tokens


def all_sequences(n: int, length: int) -> np.ndarray:
    return np.array(list(itertools.product(range(n), repeat=length)), np.int32).reshape(-1, length)


def random_joint(tokens: int, length: int, seed: int = 0, concentration: float = 1.0) -> np.ndarray:
    probs = np.random.default_rng(seed).dirichlet(np.full(tokens**length, concentration))
    return probs.reshape((tokens,) * length)


def conditional(p0: np.ndarray, positions, ids) -> np.ndarray:
    keep = np.zeros_like(p0, dtype=bool)
    index = [slice(None)] * p0.ndim
    for position, token in zip(positions, ids):
        index[position] = token
    keep[tuple(index)] = True
    out = np.where(keep, p0, 0.0)
    return out / out.sum()


def kernel(graph_type: str, tokens: int, sigma, xp=np):
    """T[b, y, x0] = p_{t|0}(y | x0) for total noise sigma[b]: `[B, dim, N]`."""
    dtype = np.float64 if xp is np else jnp.float32
    sigma = xp.asarray(sigma, dtype).reshape(-1, 1, 1)
    stay = xp.exp(-sigma)
    move = -xp.expm1(-sigma)
    eye = xp.eye(tokens, dtype=dtype)[None]
    if graph_type == "absorb":
        mask_row = xp.ones((1, 1, tokens), dtype)
        return xp.concatenate([stay * eye, move * mask_row], axis=1)
    if graph_type == "uniform":
        return stay * eye + move / tokens
    raise ValueError(graph_type)


def marginal(graph_type: str, p0, sigma, xp=np):
    """p_t over all dim**L states, flattened row-major: `[B, dim**L]`."""
    tokens, length = p0.shape[0], p0.ndim
    trans = kernel(graph_type, tokens, sigma, xp)
    dtype = np.float64 if xp is np else jnp.float32
    p = xp.broadcast_to(xp.asarray(p0, dtype)[None], (trans.shape[0],) + p0.shape)
    for axis in range(1, length + 1):
        p = xp.moveaxis(p, axis, -1)
        p = xp.einsum("b...n,byn->b...y", p, trans)
        p = xp.moveaxis(p, -1, axis)
    return p.reshape(trans.shape[0], -1)


def _gather_ratios(p_t, x, dim: int, xp):
    """p_t `[B or 1, dim**L]`, x `[B, L]` -> p_t(x with x_l := y) / p_t(x) `[B, L, dim]`."""
    length = x.shape[-1]
    strides = xp.asarray(dim ** np.arange(length - 1, -1, -1))
    index = (x * strides).sum(-1)                                            # [B]
    changed = (index[:, None, None] - (x * strides)[:, :, None]
               + xp.arange(dim)[None, None, :] * strides[None, :, None])     # [B, L, dim]
    p_t = xp.broadcast_to(p_t, (x.shape[0], p_t.shape[-1]))
    numer = xp.take_along_axis(p_t, changed.reshape(x.shape[0], -1), axis=1).reshape(changed.shape)
    denom = xp.take_along_axis(p_t, index[:, None], axis=1)[:, :, None]
    return numer / xp.where(denom > 0, denom, 1.0)


def scores(graph_type: str, p0, x, sigma, xp=np):
    """Concrete score `[B, L, dim]`: p_t(x with x_l := y) / p_t(x), one noise level per row."""
    dim = dim_of(graph_type, p0.shape[0])
    return _gather_ratios(marginal(graph_type, p0, sigma, xp), xp.asarray(x), dim, xp)


def exact_score_fn(graph_type: str, p0, shared_sigma: bool = False):
    """score_fn(x: int[B, L], sigma: float[B]) -> float32[B, L, dim] (jittable).

    shared_sigma=True computes the marginal once from sigma[0] (valid for samplers, where every row is at
    the same time; ~B times cheaper)."""
    p0 = np.asarray(p0, np.float32)
    dim = dim_of(graph_type, p0.shape[0])

    def score_fn(x, sigma):
        sigma = jnp.asarray(sigma, jnp.float32).reshape(-1)
        if shared_sigma:
            p_t = marginal(graph_type, p0, sigma[:1], jnp)
            return _gather_ratios(p_t, jnp.asarray(x), dim, jnp).astype(jnp.float32)
        return scores(graph_type, p0, x, sigma, jnp).astype(jnp.float32)

    return score_fn


def exact_log_score_fn(graph_type: str, p0):
    score_fn = exact_score_fn(graph_type, p0)

    def log_score_fn(x, sigma):
        return jnp.log(score_fn(x, sigma))

    return log_score_fn
