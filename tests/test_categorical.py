"""Categorical draws: the default ("unbiased") is exact, the reference's float32 race truncates the tail.

A token whose probability is a fraction q of the leader's beats it in the exponential race when its
E < q E_leader, an event of probability ~q. The under-sampling of the reference's draw (Zheng et al. 2024,
arXiv 2409.02908) is therefore a property of the lower tail of its E at x ~ 1e-8, which Monte Carlo would
need ~1e10 draws to see. But `exponential_from_bits` is a deterministic map from random bits, so the exact
law of E in that tail follows from enumerating every bit pattern that lands there (2^24 patterns); the
probability that a tail token is drawn is then an exact one-dimensional integral over the leader's E.
Measured (printed by test_tail_mass_by_enumeration), probability of drawing a token of relative weight q,
divided by its true probability:

    q          1e-12   1e-9    1e-8    3e-8    1e-7    1e-6
    unbiased   1.001   1.000   (E is exact to 2^-49 in probability, by construction, above 3e-8)
    reference  0       0       0.015   0.31    0.73    0.97

so a GPT-2-sized vocabulary whose tail tokens sit below ~1e-7 of the leader is sampled as if at a lower
temperature by the reference draw. The bulk of both laws and the exactness of the (two-level) race are
checked by Monte Carlo.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sedd_jax import categorical

DRAWS = 100_000


@functools.lru_cache(maxsize=None)
def _sampler(method):
    return jax.jit(lambda key, probs: categorical.sample_categorical(key, probs, method))


def draw(probs, n=DRAWS, method="unbiased", seed=0):
    probs = jnp.broadcast_to(jnp.asarray(probs, jnp.float32), (n, len(probs)))
    return np.asarray(_sampler(method)(jax.random.key(seed, impl="rbg"), probs))


@pytest.mark.parametrize("k", [2, 3, 7, 60, 1000])
def test_unbiased_draw_is_exact(k):
    rng = np.random.default_rng(k)
    probs = rng.gamma(0.3, size=k)
    probs[rng.random(k) < 0.2] = 0.0          # zero entries never win
    probs[0] = -1.0                            # nor do negative ones
    probs[-1] = max(probs[-1], 1e-3)
    x = draw(probs, seed=k)
    assert probs[x].min() > 0
    want = np.clip(probs, 0, None) / np.clip(probs, 0, None).sum()
    counts = np.bincount(x, minlength=k)
    expected = want * len(x)
    big = expected >= 5
    stat = ((counts[big] - expected[big]) ** 2 / expected[big]).sum() + \
        (counts[~big].sum() - expected[~big].sum()) ** 2 / max(expected[~big].sum(), 1e-9)
    assert scipy.stats.chi2.sf(stat, big.sum()) > 1e-4


def test_reference_draw_matches_in_the_bulk():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    counts = np.bincount(draw(probs, method="reference"), minlength=4)
    assert scipy.stats.chisquare(counts, probs * DRAWS).pvalue > 1e-4


def test_all_nonpositive_row_returns_largest():
    """(the reference's flat race has no such rule: it returns an arbitrary index there)"""
    probs = jnp.array([[-1.0, -0.5, -2.0], [0.0, 0.0, 0.0]])
    out = np.asarray(categorical.sample_categorical(jax.random.key(0), probs))
    assert out[0] == 1 and 0 <= out[1] < 3


def test_block_size_covers_vocabulary():
    for k in (1, 2, 5, 50257, 50258, 50261, 100):
        size = categorical.block_size(k)
        blocks = -(-k // size)
        assert size * blocks >= k and size * (blocks - 1) < k
        assert size + blocks <= 10 * (int(np.sqrt(k)) + 1)  # ~sqrt(k) exponentials per level
    assert categorical.block_size(50258) == 26 and categorical.block_size(50261) == 225  # 26 x 1933; prime


@pytest.mark.parametrize("method", categorical.METHODS)
def test_exponential_bulk(method):
    e = np.asarray(jax.jit(lambda key: categorical.exponential_noise(key, (1 << 20,), method))(jax.random.key(1)))
    assert np.isfinite(e).all() and e.min() >= 0
    assert scipy.stats.kstest(e, "expon").pvalue > 1e-4


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown categorical sampling method 'fp64'"):
        categorical.sample_categorical(jax.random.key(0), jnp.ones(3), "fp64")


# ----------------------------------------------------------------------------- the lower tail, exactly

FIELD = np.arange(1 << 24, dtype=np.uint32)  # every value of a 24-bit field


@functools.lru_cache(maxsize=None)
def reference_tail_values() -> np.ndarray:
    """All 2^24 equally likely values of the reference's E, sorted."""
    bits = (FIELD << 8)[None]
    return np.sort(np.asarray(jax.jit(lambda b: categorical.exponential_from_bits(b, "reference"))(bits)))


@functools.lru_cache(maxsize=None)
def unbiased_tail_values() -> np.ndarray:
    """The unbiased E on its lowest stratum: lower-half bit set, top field a = 0, every low field b. This
    stratum has probability 2^-1 * 2^-24 and holds every E < 2^-25 (any a >= 1 gives E >= 2^-25)."""
    hi = np.ones_like(FIELD)
    bits = np.stack([hi, FIELD << 8])
    return np.sort(np.asarray(jax.jit(lambda b: categorical.exponential_from_bits(b, "unbiased"))(bits)))


def lower_cdf(method: str, x: np.ndarray) -> np.ndarray:
    """Exact P(E < x) for x < 2^-25 (reference: any x)."""
    if method == "reference":
        values = reference_tail_values()
        return np.searchsorted(values, x, side="left") / len(values)
    assert (x < 2.0**-25).all()
    values = unbiased_tail_values()
    return 2.0**-25 * np.searchsorted(values, x, side="left") / len(values)


def beat_leader_ratio(method: str, q: float) -> float:
    """P(E_tail < q E_leader) / q, with E_leader ~ Exp(1): the drawn / true probability of a token whose
    weight is q times the leader's (the other tokens' competition is second order and identical for both)."""
    leader = np.linspace(0, 28, 400_001)[1:]  # the leader's E; its law in the bulk is exact (KS above)
    density = np.exp(-leader)
    return float(np.trapezoid(lower_cdf(method, q * leader) * density, leader) / q)


def test_lower_tail_by_enumeration():
    x = np.array([1e-13, 1e-11, 1e-9, 1e-8, 2.9e-8])
    np.testing.assert_allclose(lower_cdf("unbiased", x) / -np.expm1(-x), 1.0, rtol=0.02)
    np.testing.assert_allclose(lower_cdf("unbiased", x[1:]) / -np.expm1(-x[1:]), 1.0, rtol=1e-4)
    smallest = reference_tail_values()[0]
    print(f"reference: smallest E = {smallest:.4g} (2^-24 = {2.0**-24:.4g})")
    assert 5.9e-8 < smallest < 6.0e-8
    assert (lower_cdf("reference", x[:4]) == 0).all()


def test_tail_mass_by_enumeration():
    unbiased = {q: beat_leader_ratio("unbiased", q) for q in (1e-12, 1e-9)}
    reference = {q: beat_leader_ratio("reference", q) for q in (1e-12, 1e-9, 1e-8, 3e-8, 1e-7, 1e-6)}
    print("drawn / true probability of a token q times as likely as the leader")
    print("  unbiased: ", {q: round(r, 4) for q, r in unbiased.items()})
    print("  reference:", {q: round(r, 4) for q, r in reference.items()})
    for ratio in unbiased.values():
        assert abs(ratio - 1) < 1e-3
    assert reference[1e-12] == 0 and reference[1e-9] == 0
    assert reference[1e-8] < 0.03
    assert 0.2 < reference[3e-8] < 0.45
    assert 0.5 < reference[1e-7] < 0.8
    assert 0.95 < reference[1e-6] < 0.99
    # A GPT-2-sized tail: 50,256 tokens each 1e-8 of the leader carry 5e-4 of the mass per position, i.e.
    # ~0.5 tokens per 1024-token sequence per step that the reference draw (almost) never produces.
