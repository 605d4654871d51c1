"""Diffusion graphs: the per-token forward CTMC and its rate operators (reference §2).

The forward process on one token is dp_t/dt = sigma(t) Q p_t with the column convention: column x of Q
holds the rates out of state x (Q[y, x] is the rate x -> y). Over a total noise sigma_bar the transition
p_{t|0}(. | x) is column x of expm(sigma_bar Q).

Every method is a pure function of arrays and the graph's static vocabulary size, so it can be jitted and
is agnostic to batch shape: token ids have any shape `[...]` and scores/rates have shape `[..., dim]`.

Per-sequence noise levels (`sigma`, `dsigma`) arrive as `[B]` or `[B, 1]` and are broadcast by
APPENDING trailing axes (never numpy's right-aligned rule, which misbroadcasts `[B, 1]` against
`[B, L, dim]` when B == L). A scalar broadcasts everywhere.

Deliberate differences from the reference:
  * `Absorbing.transition` is implemented (the reference's body is `pass`).
  * `Absorbing.staggered_score` computes the MASK entry as s_MASK + (1 - e^dsigma) sum_{real j} s_j; the
    reference's e^dsigma s_MASK + (1 - e^dsigma) sum_all s is the same value but cancels in float32 when
    e^dsigma is large.
  * `Absorbing.score_entropy` sums the positive term in float32 (the reference sums a bf16 tensor under
    bf16 autocast); non-mask positions are masked before `exp` so they can never overflow into NaN
    gradients.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from sedd_jax import categorical


def _per_token(sigma: jax.Array, token_ndim: int) -> jax.Array:
    """Appends trailing axes to a per-sequence `sigma` ([], [B] or [B, 1]) so it broadcasts against
    token-shaped arrays of rank `token_ndim`."""
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma.ndim > token_ndim:
        raise ValueError(
            f"noise level of shape {sigma.shape} has more axes than the tokens it applies to "
            f"(rank {token_ndim}); pass one value per sequence ([B] or [B, 1]) or per token")
    return sigma.reshape(sigma.shape + (1,) * (token_ndim - sigma.ndim))


def _expm1_total_noise(sigma: jax.Array) -> jax.Array:
    """e^sigma - 1 with the reference's branch: `expm1` below 0.5, `exp - 1` from 0.5 on."""
    return jnp.where(sigma < 0.5, jnp.expm1(sigma), jnp.exp(sigma) - 1)


def _gather(values: jax.Array, index: jax.Array) -> jax.Array:
    """values[..., index] per position: `[..., dim]`, `[...]` int -> `[...]`.

    Its gradient is written as a select over the row, which fuses into the rest of the backward pass; autodiff's is
    a scatter into a zeroed `[..., dim]` buffer (SEDD-small on an H200: ~7 GiB of memory traffic per train step)."""
    return _take(values, index, values.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _take(values: jax.Array, index: jax.Array, dim: int) -> jax.Array:
    return jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0]


def _take_forward(values, index, dim):
    return _take(values, index, dim), index


def _take_backward(dim, index, d_out):
    columns = jax.lax.broadcasted_iota(jnp.int32, index.shape + (dim,), index.ndim)
    return jnp.where(columns == index[..., None], d_out[..., None], jnp.zeros((), d_out.dtype)), None


_take.defvjp(_take_forward, _take_backward)


@dataclasses.dataclass(frozen=True)
class Graph:
    """Common reverse-time helpers; subclasses define the forward rates. Hashable, so it can be a
    static argument of `jax.jit`."""

    tokens: int

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def absorb(self) -> bool:
        raise NotImplementedError

    def one_hot(self, i: jax.Array) -> jax.Array:
        """`[...]` int -> `[..., dim]` float32."""
        return jax.nn.one_hot(i, self.dim, dtype=jnp.float32)

    def reverse_rate(self, i: jax.Array, score: jax.Array) -> jax.Array:
        """Reverse-process rate column at state i: R_y = s_y Q[i, y] for y != i, R_i = -sum_{y != i} R_y.

        i: `[...]` int; score: `[..., dim]` positive ratios. Returns `[..., dim]` float32.
        """
        i_hot = self.one_hot(i)
        rate = self.transp_rate(i) * score.astype(jnp.float32) * (1.0 - i_hot)
        return rate - i_hot * rate.sum(axis=-1, keepdims=True)

    def sample_rate(self, key: jax.Array, i: jax.Array, rate: jax.Array, method: str = "unbiased") -> jax.Array:
        """Draws from the (unnormalised) vector one_hot(i) + rate per position. `[...]` int32."""
        return categorical.sample_categorical(key, self.one_hot(i) + rate, method=method)


@dataclasses.dataclass(frozen=True)
class Uniform(Graph):
    """Uniform graph: Q = (1/N)(1 1^T - N I); every token jumps to every other at rate 1/N. dim = N."""

    @property
    def dim(self) -> int:
        return self.tokens

    @property
    def absorb(self) -> bool:
        return False

    def rate(self, i: jax.Array) -> jax.Array:
        """Column i of Q: `[..., N]`."""
        return jnp.full(i.shape + (self.dim,), 1.0 / self.dim, jnp.float32) - self.one_hot(i)

    def transp_rate(self, i: jax.Array) -> jax.Array:
        """Row i of Q (Q is symmetric): `[..., N]`."""
        return self.rate(i)

    def transition(self, i: jax.Array, sigma: jax.Array) -> jax.Array:
        """Column i of expm(sigma Q): (1 - e^-sigma)/N off i, the rest of the mass at i. `[..., N]`."""
        off = (-jnp.expm1(-_per_token(sigma, i.ndim)) / self.dim)[..., None]
        i_hot = self.one_hot(i)
        return off * (1.0 - i_hot) + i_hot * (1.0 - (self.dim - 1) * off)

    def transp_transition(self, i: jax.Array, sigma: jax.Array) -> jax.Array:
        return self.transition(i, sigma)

    def sample_transition(self, key: jax.Array, i: jax.Array, sigma: jax.Array) -> jax.Array:
        """With probability 1 - e^-sigma per position, a uniformly random token (possibly the same)."""
        move_key, token_key = jax.random.split(key)
        move_chance = -jnp.expm1(-_per_token(sigma, i.ndim))
        move = jax.random.uniform(move_key, i.shape) < move_chance
        return jnp.where(move, jax.random.randint(token_key, i.shape, 0, self.dim, i.dtype), i)

    def staggered_score(self, score: jax.Array, dsigma: jax.Array) -> jax.Array:
        """expm(-dsigma Q) s = e^dsigma s + (1 - e^dsigma) sum(s)/N. `[..., N]` float32."""
        score = score.astype(jnp.float32)
        epow = jnp.exp(-_per_token(dsigma, score.ndim - 1))[..., None]
        return ((epow - 1) / (self.dim * epow)) * score.sum(axis=-1, keepdims=True) + score / epow

    def sample_limit(self, key: jax.Array, *batch_dims: int) -> jax.Array:
        """Uniform random tokens `[*batch_dims]` int32."""
        return jax.random.randint(key, batch_dims, 0, self.dim, jnp.int32)

    def score_entropy(self, log_score: jax.Array, sigma: jax.Array, x: jax.Array, x0: jax.Array) -> jax.Array:
        """Per-position score entropy against the true ratios p_{t|0}(y|x0)/p_{t|0}(x|x0), weighted by Q.

        log_score: `[..., N]`; sigma: per sequence; x (= x_t), x0: `[...]` int. Returns `[...]` float32, >= 0,
        and exactly 0 when exp(log_score) equals the true ratios.
        """
        log_score = log_score.astype(jnp.float32)
        n = self.dim
        esigm1 = _expm1_total_noise(_per_token(sigma, x.ndim))
        ratio = 1 - n / (esigm1 + n)
        stay = x == x0
        neg_term = log_score.mean(axis=-1) - _gather(log_score, x) / n
        neg_term = jnp.where(stay, ratio * neg_term, _gather(log_score, x0) / esigm1 + neg_term)
        const = jnp.where(stay,
                          (n - 1) / n * ratio * (jnp.log(ratio) - 1),
                          ((-jnp.log(ratio) - 1) / ratio - (n - 2)) / n)
        score = jnp.exp(log_score)
        pos_term = score.mean(axis=-1) - _gather(score, x) / n
        return pos_term - neg_term + const


@dataclasses.dataclass(frozen=True)
class Absorbing(Graph):
    """Absorbing graph: every real token jumps to MASK (id N) at rate 1; MASK never leaves. dim = N + 1."""

    @property
    def dim(self) -> int:
        return self.tokens + 1

    @property
    def absorb(self) -> bool:
        return True

    @property
    def mask_id(self) -> int:
        return self.tokens

    def rate(self, i: jax.Array) -> jax.Array:
        """Column i of Q: one_hot(MASK) - one_hot(i). `[..., N + 1]`."""
        return jax.nn.one_hot(jnp.full(i.shape, self.mask_id), self.dim, dtype=jnp.float32) - self.one_hot(i)

    def transp_rate(self, i: jax.Array) -> jax.Array:
        """Row i of Q: -1 at i for a real token; 1 at every real token for MASK. `[..., N + 1]`."""
        is_mask = (i == self.mask_id)[..., None].astype(jnp.float32)
        return is_mask - self.one_hot(i)

    def transition(self, i: jax.Array, sigma: jax.Array) -> jax.Array:
        """Column i of expm(sigma Q): e^-sigma at i and 1 - e^-sigma at MASK (all mass at MASK for MASK)."""
        stay = jnp.exp(-_per_token(sigma, i.ndim))[..., None]
        i_hot = self.one_hot(i)
        mask_hot = jax.nn.one_hot(jnp.full(i.shape, self.mask_id), self.dim, dtype=jnp.float32)
        is_mask = (i == self.mask_id)[..., None]
        return jnp.where(is_mask, mask_hot, stay * i_hot + (1 - stay) * mask_hot)

    def transp_transition(self, i: jax.Array, sigma: jax.Array) -> jax.Array:
        """Row i of expm(sigma Q): e^-sigma at i for a real token; for MASK, 1 - e^-sigma at every real
        token and 1 at MASK. `[..., N + 1]`."""
        sigma = _per_token(sigma, i.ndim)
        is_mask = (i == self.mask_id).astype(jnp.float32)
        return jnp.exp(-sigma)[..., None] * self.one_hot(i) + (is_mask * -jnp.expm1(-sigma))[..., None]

    def sample_transition(self, key: jax.Array, i: jax.Array, sigma: jax.Array) -> jax.Array:
        """With probability 1 - e^-sigma per position, replace by MASK."""
        move_chance = -jnp.expm1(-_per_token(sigma, i.ndim))
        move = jax.random.uniform(key, i.shape) < move_chance
        return jnp.where(move, jnp.asarray(self.mask_id, i.dtype), i)

    def staggered_score(self, score: jax.Array, dsigma: jax.Array) -> jax.Array:
        """expm(-dsigma Q) s: e^dsigma s_j for real j; s_MASK + (1 - e^dsigma) sum_{j real} s_j at MASK."""
        score = score.astype(jnp.float32)
        edsigma = jnp.exp(_per_token(dsigma, score.ndim - 1))
        # The reference adds (1 - e^dsigma) sum_all s to e^dsigma s_MASK, which cancels catastrophically in
        # float32 when e^dsigma is large (e.g. geometric noise from sigma_bar = 20); summing the real tokens
        # only is the same value without the cancellation.
        mask_entry = score[..., -1] + (1 - edsigma) * score[..., :-1].sum(axis=-1)
        return (score * edsigma[..., None]).at[..., -1].set(mask_entry)

    def sample_limit(self, key: jax.Array, *batch_dims: int) -> jax.Array:
        """All MASK: `[*batch_dims]` int32 (the key is unused; kept for a uniform API)."""
        del key
        return jnp.full(batch_dims, self.mask_id, jnp.int32)

    def score_entropy(self, log_score: jax.Array, sigma: jax.Array, x: jax.Array, x0: jax.Array) -> jax.Array:
        """Per-position score entropy; nonzero only where x (= x_t) is MASK.

        At a MASK position with r = 1/(e^sigma - 1): sum_{j real} s_j - r log s_{x0} + r (log r - 1).
        log_score: `[..., N + 1]`; x, x0: `[...]` int. Returns `[...]` float32.
        """
        log_score = log_score.astype(jnp.float32)
        is_mask = x == self.mask_id
        ratio = 1 / _expm1_total_noise(_per_token(sigma, x.ndim))
        safe_log_score = jnp.where(is_mask[..., None], log_score, 0.0)
        # the real tokens' terms, MASK's column sent to exp(-inf) = 0 rather than sliced off (a slice's gradient
        # is a padded copy of the row)
        columns = jax.lax.broadcasted_iota(jnp.int32, log_score.shape, log_score.ndim - 1)
        pos_term = jnp.exp(jnp.where(columns < self.mask_id, safe_log_score, -jnp.inf)).sum(axis=-1)
        neg_term = ratio * _gather(safe_log_score, x0)
        const = ratio * (jnp.log(ratio) - 1)
        return jnp.where(is_mask, pos_term - neg_term + const, 0.0)


GRAPH_TYPES = {"absorb": Absorbing, "uniform": Uniform}


def get_graph(graph_type: str, tokens: int) -> Graph:
    """`get_graph("absorb" | "uniform", tokens)`; absorb adds a MASK token (dim = tokens + 1)."""
    if graph_type not in GRAPH_TYPES:
        raise ValueError(f"unknown graph type {graph_type!r}; choose one of {sorted(GRAPH_TYPES)} "
                         "(config field graph.type)")
    if int(tokens) < 2:
        raise ValueError(f"a graph needs at least 2 tokens, got tokens={tokens}")
    return GRAPH_TYPES[graph_type](int(tokens))
