"""The train state and its optimizer: AdamW with linear warm-up and global-norm clipping, updates that are
checked before they are applied, and the EMA of the parameters (reference §4.4-4.6).

`TrainState` is what the train step maps to its successor, what checkpoints hold (sedd_jax.checkpoints) and
what the mesh shards (`train_state_layout`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from sedd_jax import parallel


@flax.struct.dataclass
class TrainState:
    step: jax.Array       # int32[]: updates taken (applied or skipped)
    params: Any           # the model's parameters (float32)
    opt_state: Any        # SkipState around the AdamW (and clipping) state
    ema: Any              # exponential moving average of params, the weights that are evaluated and sampled


class SkipState(NamedTuple):
    inner: Any                # the wrapped optimizer's state, unchanged by a skipped update
    consecutive: jax.Array    # int32[]: updates skipped in a row (0 after an applied update)
    total: jax.Array          # int32[]: updates skipped over the whole run


def skip_unsafe_updates(inner: optax.GradientTransformation, max_update_ratio: float
                        ) -> optax.GradientTransformationExtraArgs:
    """Wraps `inner` so that an update is applied only when it is safe: the loss (the `loss=` keyword of
    `update`), the gradients and the update are finite, and the update's norm is at most `max_update_ratio`
    times the parameters' norm (or 1), which stops a diverging learning rate in one step. An unsafe update
    becomes zeros and leaves the inner state as it was; `SkipState` counts the skips (optax.apply_if_finite
    does this for non-finite gradients only)."""

    def init(params) -> SkipState:
        return SkipState(inner.init(params), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update(grads, state: SkipState, params, *, loss=None, **extra_args):
        del extra_args
        updates, inner_state = inner.update(grads, state.inner, params)
        update_norm, param_norm = optax.tree.norm(updates), optax.tree.norm(params)
        safe = (jnp.isfinite(optax.tree.norm(grads)) & jnp.isfinite(update_norm)
                & (update_norm <= max_update_ratio * jnp.maximum(param_norm, 1.0)))
        if loss is not None:
            safe &= jnp.isfinite(loss)
        updates = jax.tree.map(lambda u: jnp.where(safe, u, jnp.zeros_like(u)), updates)
        inner_state = jax.tree.map(lambda new, old: jnp.where(safe, new, old), inner_state, state.inner)
        skipped = (~safe).astype(jnp.int32)
        return updates, SkipState(inner_state, (state.consecutive + 1) * skipped, state.total + skipped)

    return optax.GradientTransformationExtraArgs(init, update)


def learning_rate_schedule(config):
    """lr_k = lr * min((k + 1) / warmup, 1) for the k-th update (0-based), constant afterwards (§4.4)."""
    lr, warmup = float(config.optim.lr), max(int(config.optim.warmup), 1)
    return lambda count: lr * jnp.minimum((count + 1) / warmup, 1.0)


def create_optimizer(config) -> optax.GradientTransformationExtraArgs:
    """Global-norm clipping (when optim.grad_clip > 0) then AdamW, inside `skip_unsafe_updates`."""
    o = config.optim
    adamw = optax.adamw(learning_rate_schedule(config), b1=o.beta1, b2=o.beta2, eps=o.eps,
                        weight_decay=o.weight_decay)
    inner = optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip > 0 else adamw
    return skip_unsafe_updates(inner, float(config.training.get("max_update_ratio", 1.0)))


def ema_decay(config, num_updates: jax.Array) -> jax.Array:
    """min(ema, (1 + n) / (10 + n)) with n the number of updates including this one (first: 2/11)."""
    n = num_updates.astype(jnp.float32)
    return jnp.minimum(config.training.ema, (1 + n) / (10 + n))


def train_state_layout(config, model, optimizer, mesh, init_key):
    """How the train state is built and laid out over `mesh`, before anything is allocated.

    Returns (init_state, abstract_state, state_shardings): `init_state(key) -> TrainState` (jit it with
    `out_shardings=state_shardings`), the state's `jax.ShapeDtypeStruct` tree carrying those shardings, and the
    NamedSharding tree (parameters, EMA and optimizer moments sharded by the logical-axis rules; step and
    counters replicated)."""
    dummy = (jnp.zeros((1, 2), jnp.int32), jnp.zeros((1,), jnp.float32))
    boxed = jax.eval_shape(lambda k: model.init(k, *dummy)["params"], jax.random.key(0))
    param_shardings = parallel.param_shardings(boxed, mesh, parallel.logical_rules(config))
    replicated = parallel.replicated(mesh)

    def init_state(key) -> TrainState:
        params = flax.core.meta.unbox(model.init(key, *dummy)["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          ema=jax.tree.map(jnp.copy, params))

    abstract_state = jax.eval_shape(init_state, init_key)
    state_shardings = TrainState(
        step=replicated, params=param_shardings, ema=param_shardings,
        opt_state=optax.tree_map_params(optimizer, lambda _, s: s, abstract_state.opt_state, param_shardings,
                                        transform_non_params=lambda _: replicated))
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, state_shardings)
    return init_state, abstract_state, state_shardings
