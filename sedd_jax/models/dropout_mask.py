"""Dropout keep masks from one fused counter-based hash (Threefry-2x32, 20 rounds; Salmon et al., SC 2011).

`jax.random.bernoulli` draws 32 random bits per element, and on CPUs jax lowers Threefry as a while loop over
its 5 four-round groups, one pass over memory per group: the masks of issue 8's benchmark (8 per train step,
[8, 256, 256] each) took ~36 ms of a ~550 ms step. Here the hash is written out as plain uint32 arithmetic on
counters, which XLA fuses into a single loop on every backend, and each 32-bit output word gives two elements
16 bits each: the same masks take ~2.5 ms (bench/README.md). Statistically the masks are what
`jax.random.bernoulli` gives (independent elements, keep probability within 2^-17 of 1 - rate); they are other
draws, so dropout in sedd-jax is not bitwise the same as before this module.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

RESOLUTION = 2**16  # dropout rates are rounded to multiples of 1 / 2^16 (16 random bits per element)
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key: tuple[jax.Array, jax.Array], x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32-20 of the counter pairs (x0, x1) (uint32 arrays of one shape) under a two-word uint32 key;
    elementwise, so XLA fuses it. The same function as `jax.random`'s threefry (the Random123 test vectors
    hold, tests/test_model.py)."""
    k0, k1 = key
    ks = (k0, k1, k0 ^ k1 ^ _KEY_PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(group + 1) % 3]
        x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> tuple[jax.Array, float]:
    """A dropout keep mask of `shape` (bool) and its exact keep probability p = 1 - round(rate * 2^16) / 2^16.

    The rate moves by at most 2^-17 (0.1 -> 0.100006). `key` is any jax PRNG key (typed or raw); two words drawn
    from it key the hash. Along the last axis (size n, m = ceil(n / 4) counters per row), element j takes 16
    bits of the hash of counter j mod m: the low or high half of its first or second word for j // m = 0..3."""
    threshold = round(rate * RESOLUTION)
    if not 0 <= threshold < RESOLUTION:
        raise ValueError(f"dropout rate {rate} must be in [0, 1)")
    *lead, last = shape
    per_row = -(-last // 4)
    if math.prod(lead) * per_row >= 2**32:
        raise ValueError(f"dropout mask of shape {shape} is too large for 32-bit counters; split the call")
    words = jax.random.bits(key, (2,), jnp.uint32)
    counter_shape = (*lead, per_row)
    strides = [math.prod(counter_shape[d + 1:]) for d in range(len(counter_shape))]
    # The row-major index of each counter, built in its own shape (elementwise, so a sharded mask shards it).
    counters = sum(jax.lax.broadcasted_iota(jnp.uint32, counter_shape, d) * np.uint32(stride)
                   for d, stride in enumerate(strides))
    w0, w1 = threefry2x32((words[0], words[1]), counters, jnp.zeros_like(counters))
    halves = (w0 & np.uint32(0xFFFF), w0 >> np.uint32(16), w1 & np.uint32(0xFFFF), w1 >> np.uint32(16))
    keep = jnp.concatenate([h >= np.uint32(threshold) for h in halves], axis=-1)[..., :last]
    return keep, 1 - threshold / RESOLUTION
