"""Categorical draws from unnormalised probability vectors (reference §5.5).

Both methods are the exponential race: the winner is argmax_j p_j / E_j with E_j ~ Exp(1) i.i.d., which
picks j with probability p_j / sum(p) exactly when E is exact. Entries <= 0 never win (unless all are).

* "unbiased" (default): E = -log1p(-u) with u built from two float32 uniforms (about 46 random bits near
  0), so small E, the ones that let a low-probability token win, keep their relative precision down to
  about 1e-14. No x64 mode is needed.
* "reference": the official code's draw, E = 1e-10 - log(U + 1e-10) with one float32 U. U's 23-bit grid
  truncates the exponential's lower tail (Zheng et al. 2024, arXiv 2409.02908): low-probability tokens are
  under-sampled, which acts as a lowered temperature and flatters generative perplexity. Kept only to
  reproduce the reference's numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

METHODS = ("unbiased", "reference")


def _fine_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniforms on [0, 1) whose resolution near 0 is about 2^-46 instead of 2^-23."""
    coarse_key, fine_key = jax.random.split(key)
    coarse = jax.random.uniform(coarse_key, shape, jnp.float32)
    fine = jax.random.uniform(fine_key, shape, jnp.float32)
    return coarse + fine * jnp.float32(2.0**-23)


def exponential_noise(key: jax.Array, shape: tuple[int, ...], method: str = "unbiased") -> jax.Array:
    """Exp(1) samples `shape` float32 for the race, as drawn by `method`."""
    if method == "unbiased":
        # min(., 1 - 2^-24) keeps u < 1 after rounding the sum; E then stays finite.
        u = jnp.minimum(_fine_uniform(key, shape), jnp.float32(1 - 2.0**-24))
        return -jnp.log1p(-u)
    if method == "reference":
        u = jax.random.uniform(key, shape, jnp.float32)
        return 1e-10 - jnp.log(u + 1e-10)
    raise ValueError(f"unknown categorical sampling method {method!r}; choose one of {METHODS}")


def sample_categorical(key: jax.Array, probs: jax.Array, method: str = "unbiased") -> jax.Array:
    """One draw per row of `probs` `[..., K]` (unnormalised, entries <= 0 never win). Returns `[...]` int32."""
    probs = probs.astype(jnp.float32)
    race = probs / exponential_noise(key, probs.shape, method)
    return jnp.argmax(race, axis=-1).astype(jnp.int32)
