"""Noise schedules (reference §3): `sched(t) -> (total_noise, rate_noise)`.

total_noise is sigma_bar(t) = integral_0^t sigma(s) ds, rate_noise is sigma(t) = d sigma_bar / dt; t in [0, 1]
of any shape, both outputs have t's shape, float32. Schedules are frozen dataclasses (hashable, jit-static).
The reference's dummy trainable scalar `empty` has no counterpart: it never receives a gradient.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LogLinear:
    """sigma_bar(t) = -log(1 - (1 - eps) t): the masking probability 1 - e^-sigma_bar = (1 - eps) t is
    linear in t. sigma(t) = (1 - eps) / (1 - (1 - eps) t)."""

    eps: float = 1e-3

    def total_noise(self, t: jax.Array) -> jax.Array:
        return -jnp.log1p(-(1 - self.eps) * jnp.asarray(t, jnp.float32))

    def rate_noise(self, t: jax.Array) -> jax.Array:
        return (1 - self.eps) / (1 - (1 - self.eps) * jnp.asarray(t, jnp.float32))

    def __call__(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.total_noise(t), self.rate_noise(t)


@dataclasses.dataclass(frozen=True)
class Geometric:
    """sigma_bar(t) = sigma_min^(1-t) sigma_max^t; sigma(t) = sigma_bar(t) log(sigma_max / sigma_min)."""

    sigma_min: float = 1e-4
    sigma_max: float = 20.0

    def total_noise(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, jnp.float32)
        return self.sigma_min ** (1 - t) * self.sigma_max ** t

    def rate_noise(self, t: jax.Array) -> jax.Array:
        return self.total_noise(t) * (math.log(self.sigma_max) - math.log(self.sigma_min))

    def __call__(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.total_noise(t), self.rate_noise(t)


def get_noise(noise_type: str, eps: float = 1e-3, sigma_min: float = 1e-4, sigma_max: float = 20.0):
    """`get_noise("loglinear", eps=1e-3)` or `get_noise("geometric", sigma_min=1e-4, sigma_max=20.)`."""
    if noise_type == "loglinear":
        if not 0 < eps < 1:
            raise ValueError(f"loglinear noise needs 0 < eps < 1, got eps={eps}")
        return LogLinear(float(eps))
    if noise_type == "geometric":
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"geometric noise needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        return Geometric(float(sigma_min), float(sigma_max))
    raise ValueError(f"unknown noise type {noise_type!r}; choose 'loglinear' or 'geometric' (config field noise.type)")


LOGLINEAR_DEFAULT_EPS = 1e-3  # not stored in official config.json files (reference §8)


def from_config(config):
    """The schedule of `config.noise` (type, and eps or sigma_min/sigma_max, defaulted where a config lacks
    them, as official checkpoints' configs do)."""
    n = config.noise
    return get_noise(n.type, eps=n.get("eps", LOGLINEAR_DEFAULT_EPS), sigma_min=n.get("sigma_min", 1e-4),
                     sigma_max=n.get("sigma_max", 20.0))
