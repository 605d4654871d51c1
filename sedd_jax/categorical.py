"""Categorical draws from unnormalised probability vectors (reference §5.5).

Both methods are the exponential race: the winner is argmax_j p_j / E_j with E_j ~ Exp(1) i.i.d., which
picks j with probability p_j / sum(p) when E is exact. Entries <= 0 never win (unless all are).

Which tokens can win depends on the LOWER tail of E: a token whose probability is a fraction q of the
leader's wins only when its E_j < q E_leader, an event of probability about q. A float32 uniform has a
grid of 2^-24 near 1, so E = -log U cannot go below ~6e-8:

* "reference": the official code's draw, E = 1e-10 - log(U + 1e-10) with U a float32 uniform on torch's
  grid {k 2^-24}. E never falls below 2^-24 ~ 5.96e-8, so tokens with q below ~1e-7 essentially never win,
  and tokens with q ~ 1e-7 .. 1e-6 are under-sampled: the draw acts like a lowered temperature (Zheng et al.
  2024, arXiv 2409.02908) and flatters generative perplexity. Kept to reproduce the reference's numbers.
* "unbiased" (default): E from 64 random bits without float64. One bit picks the half of the exponential:
  E in [0, ln 2) as -log1p(-v/2), E in [ln 2, inf) as ln 2 - log v, where v in [0, 1) carries 48 random bits
  (v = a 2^-24 + b 2^-48 keeps full float32 relative precision down to 2^-48). Both tails are then exact to
  within ~2^-49 in probability: E resolves down to ~7e-15 and up to ~34. The race runs on probabilities
  rescaled by their row maximum, so p / E cannot overflow, and in two levels (blocks of ceil(sqrt(K)), see
  `sample_categorical`), which is exact and needs ~2 sqrt(K) exponentials per row instead of K.

`tests/test_categorical.py` measures both on distributions with many small entries.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

METHODS = ("unbiased", "reference")

FLAT_RACE_MAX = 4  # up to this many categories "unbiased" races flat, above it in two levels
_TWO_M24 = 2.0**-24
_TWO_M48 = 2.0**-48


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown categorical sampling method {method!r}; choose one of {METHODS} "
                         "('unbiased' is exact, 'reference' reproduces the official float32 Gumbel draw)")
    return method


def random_bits(key: jax.Array, shape: tuple[int, ...], method: str = "unbiased") -> jax.Array:
    """The raw uint32 words a method consumes: `[2, *shape]` for "unbiased", `[1, *shape]` for "reference"."""
    words = 2 if check_method(method) == "unbiased" else 1
    return jax.random.bits(key, (words,) + tuple(shape), jnp.uint32)


def exponential_from_bits(bits: jax.Array, method: str = "unbiased") -> jax.Array:
    """Exp(1) samples from the words of `random_bits`: `[W, *shape]` uint32 -> `[*shape]` float32.

    A deterministic map, so tests can feed it chosen bit patterns (e.g. every value of a 24-bit field) and
    compute a method's exact distribution in the tails.
    """
    check_method(method)
    if method == "reference":
        # torch.rand's float32 grid: 24 random bits times 2^-24, so U in [0, 1 - 2^-24].
        u = (bits[0] >> 8).astype(jnp.float32) * jnp.float32(_TWO_M24)
        return 1e-10 - jnp.log(u + 1e-10)
    hi, lo = bits[0], bits[1]
    lower_half = (hi & 1).astype(bool)
    v = ((hi >> 8).astype(jnp.float32) * jnp.float32(_TWO_M24)
         + (lo >> 8).astype(jnp.float32) * jnp.float32(_TWO_M48))
    lower = -jnp.log1p(-0.5 * v)                        # U = v/2 in [0, 1/2): E in [0, ln 2)
    upper = jnp.float32(math.log(2.0)) - jnp.log(v)     # 1 - U = v/2 in (0, 1/2]: E in [ln 2, inf]
    return jnp.where(lower_half, lower, upper)


def exponential_noise(key: jax.Array, shape: tuple[int, ...], method: str = "unbiased") -> jax.Array:
    """Exp(1) samples `shape` float32 for the race, as drawn by `method`."""
    return exponential_from_bits(random_bits(key, shape, method), method)


def _race(probs: jax.Array, noise: jax.Array) -> jax.Array:
    """argmax_j probs_j / noise_j over the last axis for probs >= 0 (zeros never win), overflow-safe."""
    top = jnp.max(probs, axis=-1, keepdims=True)
    scaled = probs / jnp.where(top > 0, top, 1.0)
    # p / E <= 2^49 after the rescaling; 0 / 0 would be NaN, which argmax would pick.
    keys = jnp.where(probs > 0, scaled / noise, -1.0)
    return jnp.argmax(keys, axis=-1).astype(jnp.int32)


def block_size(k: int) -> int:
    """Block length of the two-level race over k categories.

    A divisor d of k lets the block sums read the [..., K] array in place (a reshape; a slice for a partial
    last block costs a copy of the whole array on CPU), so the divisor nearest sqrt(k) is used when the
    number of exponentials d + k/d stays within 10 sqrt(k) (GPT-2: 50258 = 26 x 1933, 50257 = 29 x 1733);
    otherwise ceil(sqrt(k)) with a partial last block."""
    if k <= 1:
        return 1
    root = math.isqrt(k - 1) + 1
    best = min((d for d in range(1, root + 1) if k % d == 0), key=lambda d: d + k // d)
    if best > 1 and best + k // best <= 10 * root:
        return best
    return root


def sample_categorical(key: jax.Array, probs: jax.Array, method: str = "unbiased") -> jax.Array:
    """One draw per row of `probs` `[..., K]` (unnormalised, entries <= 0 never win). Returns `[...]` int32.

    "reference": the official flat race over all K entries with float32 noise.
    "unbiased": an exact two-level race. The K entries are cut into blocks of ceil(sqrt(K)) (the last one partial); a
    race over the block sums picks block b with probability S_b / sum(S), then a race inside b picks j with
    probability p_j / S_b, so P(j) = p_j / sum(p) exactly, with about 2 sqrt(K) exponentials per row instead
    of K (450 instead of 50258 for GPT-2's vocabulary). If every entry is <= 0 the largest one is returned.
    """
    probs = probs.astype(jnp.float32)
    if check_method(method) == "reference":
        noise = exponential_noise(key, probs.shape, method)
        return jnp.argmax(probs / noise, axis=-1).astype(jnp.int32)
    k = probs.shape[-1]
    if k <= FLAT_RACE_MAX:  # a flat race draws no more exponentials than the two-level one
        noise = exponential_noise(key, probs.shape, method)
        index = _race(jnp.where(probs > 0, probs, 0.0), noise)
        return _fallback_to_largest(probs, jnp.max(probs, axis=-1) > 0, index)
    size = block_size(k)
    full = k // size                      # complete blocks; a last partial block holds the remainder
    positive = jnp.where(probs > 0, probs, 0.0)
    # Block sums without padding (a pad would copy the whole [..., K] array): slices fuse into the reduction.
    sums = positive[..., :full * size].reshape(probs.shape[:-1] + (full, size)).sum(axis=-1)
    if full * size < k:
        sums = jnp.concatenate([sums, positive[..., full * size:].sum(axis=-1, keepdims=True)], axis=-1)
    block_key, inner_key = jax.random.split(key)
    block = _race(sums, exponential_noise(block_key, sums.shape, method))            # [...]
    columns = block[..., None] * size + jnp.arange(size, dtype=jnp.int32)             # [..., size]
    inner = jnp.take_along_axis(probs, jnp.minimum(columns, k - 1), axis=-1)   # gather from probs: `positive`
    inner = jnp.where((columns < k) & (inner > 0), inner, 0.0)                 # then never materialises
    index = block * size + _race(inner, exponential_noise(inner_key, inner.shape, method))
    return _fallback_to_largest(probs, jnp.max(sums, axis=-1) > 0, index)


def _fallback_to_largest(probs, any_positive, index):
    """index where a row has a positive entry, else argmax(probs). The argmax over K is as costly as the rest
    of the draw on CPU, so it only runs when some row needs it."""
    return jax.lax.cond(jnp.all(any_positive), lambda: index.astype(jnp.int32),
                        lambda: jnp.where(any_positive, index, jnp.argmax(probs, axis=-1)).astype(jnp.int32))
