"""Graph math against closed forms (matrix exponentials of small rate matrices) and the reference fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sedd_jax import graphs
from tests import closed_form

TOKENS = 5
GRAPH_TYPES = ["absorb", "uniform"]


@pytest.fixture(params=GRAPH_TYPES)
def graph(request):
    return graphs.get_graph(request.param, TOKENS)


def test_dims():
    assert graphs.get_graph("absorb", TOKENS).dim == TOKENS + 1
    assert graphs.get_graph("uniform", TOKENS).dim == TOKENS


def test_rate_matrix_is_a_generator(graph):
    q = closed_form.rate_matrix(graph)
    np.testing.assert_allclose(q.sum(axis=0), 0, atol=1e-7)  # columns: rates out of x sum to zero
    off = q - np.diag(np.diag(q))
    assert (off >= 0).all()
    transp = np.stack([np.asarray(graph.transp_rate(jnp.asarray(x))) for x in range(graph.dim)])
    np.testing.assert_allclose(transp, q, atol=1e-7)  # transp_rate(x) is row x of Q


@pytest.mark.parametrize("sigma", [1e-3, 0.3, 2.0, 7.0])
def test_transitions_are_columns_of_expm(graph, sigma):
    expm = closed_form.expm_rate(graph, sigma)
    states = jnp.arange(graph.dim)
    np.testing.assert_allclose(np.asarray(graph.transition(states, sigma)), expm.T, atol=2e-6)
    np.testing.assert_allclose(np.asarray(graph.transp_transition(states, sigma)), expm, atol=2e-6)


@pytest.mark.parametrize("dsigma", [0.01, 0.5, 2.0])
def test_staggered_score_is_expm_minus_q_times_score(graph, dsigma):
    score = np.random.default_rng(0).exponential(size=(3, graph.dim)).astype(np.float32)
    expected = score.astype(np.float64) @ closed_form.expm_rate(graph, -dsigma).T
    np.testing.assert_allclose(np.asarray(graph.staggered_score(score, dsigma)), expected, rtol=2e-5)


def test_reverse_rate_columns_sum_to_zero(graph):
    rng = np.random.default_rng(1)
    x = rng.integers(0, graph.dim, size=(4, 7))
    score = rng.exponential(size=(4, 7, graph.dim)).astype(np.float32)
    rate = np.asarray(graph.reverse_rate(x, score))
    np.testing.assert_allclose(rate.sum(-1), 0, atol=1e-5)
    q = closed_form.rate_matrix(graph)
    # Off-diagonal entries are s_y Q[x, y] (the paper's reverse rate).
    for b, l, y in [(0, 0, 1), (1, 3, 0), (3, 6, graph.dim - 1)]:
        if y != x[b, l]:
            np.testing.assert_allclose(rate[b, l, y], score[b, l, y] * q[x[b, l], y], rtol=1e-6)


def _true_log_ratios(graph, sigma, x, x0):
    """log p_{t|0}(y | x0) / p_{t|0}(x | x0) per position: `[n]`, `[n]` -> `[n, dim]`."""
    expm = closed_form.expm_rate(graph, sigma)
    with np.errstate(divide="ignore"):
        return np.log(expm[:, x0].T) - np.log(expm[x, x0])[:, None]


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_score_entropy_nonnegative_and_zero_at_truth(graph, sigma):
    rng = np.random.default_rng(2)
    n = 200
    x0 = rng.integers(0, TOKENS, size=n)
    x = np.asarray(graph.sample_transition(jax.random.key(3), jnp.asarray(x0), sigma))
    random_log_score = rng.normal(size=(n, graph.dim)).astype(np.float32)
    entropy = np.asarray(graph.score_entropy(random_log_score, sigma, x, x0))
    assert (entropy >= -1e-5).all()
    assert entropy.max() > 1e-2
    truth = _true_log_ratios(graph, sigma, x, x0).astype(np.float32)
    truth = np.where(np.isfinite(truth), truth, -1e30)
    at_truth = np.asarray(graph.score_entropy(truth, sigma, x, x0))
    np.testing.assert_allclose(at_truth, 0, atol=5e-5 * max(1.0, 1 / sigma))
    if graph.absorb:
        assert (entropy[x != graph.mask_id] == 0).all()


def test_score_entropy_gradient_is_autodiffs_without_a_scatter(graph, monkeypatch):
    """The gathered entries' written-out gradient (a select over the row) equals autodiff's of the gather, and
    the backward pass has no scatter; for the absorbing graph both equal the closed form."""
    rng = np.random.default_rng(5)
    x0 = rng.integers(0, TOKENS, size=(3, 8))
    x = np.asarray(graph.sample_transition(jax.random.key(6), jnp.asarray(x0), 1.0))
    sigma = jnp.array([0.2, 1.0, 3.0])
    log_score = jnp.asarray(rng.normal(size=(3, 8, graph.dim)), jnp.float32)
    grad = lambda: jax.grad(lambda s: graph.score_entropy(s, sigma, x, x0).sum())  # traced afresh
    got = np.asarray(jax.jit(grad())(log_score))
    assert "scatter" not in str(jax.make_jaxpr(grad())(log_score))
    monkeypatch.setattr(graphs, "_gather", lambda v, i: jnp.take_along_axis(v, i[..., None], axis=-1)[..., 0])
    want = np.asarray(jax.jit(grad())(log_score))
    assert "scatter" in str(jax.make_jaxpr(grad())(log_score))  # autodiff's
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if graph.absorb:  # d/ds_j at a MASK position: e^{s_j} for real j, minus r = 1 / (e^sigma - 1) at x0
        ratio = 1 / np.expm1(np.asarray(sigma, np.float64))[:, None, None]
        real = np.arange(graph.dim) < TOKENS
        closed = np.exp(np.asarray(log_score, np.float64)) * real - ratio * (np.arange(graph.dim) == x0[..., None])
        closed = np.where((x == graph.mask_id)[..., None], closed, 0)
        np.testing.assert_allclose(got, closed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.1, 1.0])
def test_sample_transition_follows_transition(graph, sigma):
    x0 = jnp.full((40000,), 2)
    xt = np.asarray(graph.sample_transition(jax.random.key(4), x0, sigma))
    freq = np.bincount(xt, minlength=graph.dim) / xt.size
    expected = closed_form.expm_rate(graph, sigma)[:, 2]
    np.testing.assert_allclose(freq, expected, atol=0.01)


def test_sample_limit(graph):
    limit = np.asarray(graph.sample_limit(jax.random.key(5), 3, 1000))
    assert limit.shape == (3, 1000) and limit.dtype == np.int32
    if graph.absorb:
        assert (limit == TOKENS).all()
    else:
        assert set(np.unique(limit)) == set(range(TOKENS))


def test_per_sequence_sigma_broadcasts_by_appending_axes():
    # B == L: numpy's right-aligned broadcasting would silently mix up batch and position.
    graph = graphs.get_graph("uniform", TOKENS)
    x = jnp.zeros((3, 3), jnp.int32)
    sigma = jnp.array([0.1, 1.0, 3.0])
    for s in (sigma, sigma[:, None]):
        trans = np.asarray(graph.transition(x, s))
        for b in range(3):
            np.testing.assert_allclose(trans[b, 0], closed_form.expm_rate(graph, float(sigma[b]))[:, 0], atol=2e-6)


def test_unknown_graph_type():
    with pytest.raises(ValueError, match="unknown graph type 'masked'.*absorb.*uniform"):
        graphs.get_graph("masked", 10)


# ------------------------------------------------------------------------- parity with the reference

def test_absorb_probes_match_reference(parity):
    fixture = parity
    graph = graphs.get_graph("absorb", 50)
    i, sigma = fixture["transition_i"], fixture["transition_sigma"]
    np.testing.assert_allclose(graph.rate(i), fixture["rate"], atol=0)
    np.testing.assert_allclose(graph.transp_rate(i), fixture["transp_rate"], atol=0)
    np.testing.assert_allclose(graph.transp_transition(i, sigma), fixture["transp_transition"], atol=1e-6)
    np.testing.assert_allclose(graph.staggered_score(fixture["probe_score"], fixture["probe_dsigma"]),
                               fixture["staggered_score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graph.reverse_rate(fixture["probe_i"], fixture["probe_score"]),
                               fixture["reverse_rate"], rtol=1e-5, atol=1e-5)
    entropy = graph.score_entropy(fixture["loss_log_score"], fixture["loss_sigma"], fixture["xt"], fixture["x0"])
    np.testing.assert_allclose(entropy, fixture["score_entropy"], rtol=1e-5, atol=1e-5)
