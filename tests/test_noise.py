"""Noise schedules: reference values, closed forms, rate = d total / dt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sedd_jax import noise


def test_loglinear_matches_reference(parity):
    fixture = parity
    total, rate = noise.get_noise("loglinear", eps=1e-3)(fixture["noise_t"])
    np.testing.assert_allclose(total, fixture["noise_sigma"], rtol=1e-6)
    np.testing.assert_allclose(rate, fixture["noise_dsigma"], rtol=1e-6)


def test_loglinear_masking_probability_is_linear():
    t = jnp.linspace(0, 1, 11)
    total, _ = noise.get_noise("loglinear", eps=1e-3)(t)
    np.testing.assert_allclose(1 - np.exp(-np.asarray(total)), (1 - 1e-3) * np.asarray(t), atol=1e-6)


def test_geometric_closed_form():
    sched = noise.get_noise("geometric", sigma_min=1e-4, sigma_max=20.0)
    t = np.array([0.0, 0.25, 1.0], np.float32)
    total, rate = sched(t)
    np.testing.assert_allclose(total, 1e-4 ** (1 - t) * 20.0 ** t, rtol=1e-5)
    np.testing.assert_allclose(rate, np.asarray(total) * np.log(20.0 / 1e-4), rtol=1e-5)


@pytest.mark.parametrize("sched", [noise.get_noise("loglinear"), noise.get_noise("geometric")])
def test_rate_is_derivative_of_total(sched):
    t = jnp.array([0.1, 0.5, 0.9])
    derivative = jax.vmap(jax.grad(lambda s: sched(s)[0]))(t)
    np.testing.assert_allclose(derivative, sched(t)[1], rtol=1e-4)


def test_bad_noise_config():
    with pytest.raises(ValueError, match="unknown noise type 'cosine'"):
        noise.get_noise("cosine")
    with pytest.raises(ValueError, match="0 < eps < 1"):
        noise.get_noise("loglinear", eps=0.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        noise.get_noise("geometric", sigma_min=1.0, sigma_max=0.5)
