"""The SEDD score network and its standard sizes.

`get_model(config)` builds `SEDD` from a config with `tokens`, `graph.type` and `model.*` (the reference's
field names); `model_config("small" | "medium" | "tiny")` gives the `model.*` block of each size.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sedd_jax.models.transformer import (ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES, SEDD, compute_dtype_of,
                                        trunk_and_head)

# The reference's model configs (§0.1); "tiny" is sedd-jax's offline CPU default.
MODEL_SIZES = {
    "tiny": dict(hidden_size=128, n_heads=4, n_blocks=4, cond_dim=64, length=128, dropout=0.0, scale_by_sigma=True),
    "small": dict(hidden_size=768, n_heads=12, n_blocks=12, cond_dim=128, length=1024, dropout=0.1, scale_by_sigma=True),
    "medium": dict(hidden_size=1024, n_heads=16, n_blocks=24, cond_dim=128, length=1024, dropout=0.1, scale_by_sigma=True),
}


# How the network runs (not what it computes): see `SEDD`'s attributes. The trainer's defaults are in
# sedd_jax.configs; these apply where a config does not say (official checkpoints, older workdirs).
EXECUTION_DEFAULTS = dict(attention="plain", scan_blocks=False, remat="none")


def model_config(size: str) -> ml_collections.ConfigDict:
    """The `model.*` config block of a standard size (name, hidden_size, n_heads, n_blocks, cond_dim, length,
    dropout, scale_by_sigma)."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    return ml_collections.ConfigDict(dict(name=size, **MODEL_SIZES[size]))


def validate_model_config(config) -> None:
    """Raises ValueError when `tokens`, `graph.type` and `model.*` cannot make a SEDD network."""
    m = config.model
    if m.hidden_size % m.n_heads:
        raise ValueError(f"model.hidden_size={m.hidden_size} is not divisible by model.n_heads={m.n_heads}")
    if (m.hidden_size // m.n_heads) % 2:
        raise ValueError(f"head dim {m.hidden_size // m.n_heads} must be even for rotary embeddings; "
                         "change model.hidden_size or model.n_heads")
    if config.graph.type == "uniform" and m.scale_by_sigma:
        raise ValueError("the uniform graph requires model.scale_by_sigma=False (the sigma scaling is the "
                         "absorbing graph's parameterisation); set --config.model.scale_by_sigma=False")
    if not time_conditioning(m) and (config.graph.type != "absorb" or not m.scale_by_sigma):
        raise ValueError("model.time_conditioning=False needs graph.type='absorb' with model.scale_by_sigma=True "
                         "(only the absorbing score factorises into a time-independent part and a sigma scale); "
                         "set --config.model.time_conditioning=True")
    if not 0 <= m.dropout < 1:
        raise ValueError(f"model.dropout must be in [0, 1), got {m.dropout}")
    attention, _, remat = execution_options(m)
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"model.attention={attention!r}; choose one of {sorted(ATTENTION_IMPLEMENTATIONS)}")
    if attention == "splash" and m.get("length", 128) % 128:
        raise ValueError(f"model.attention='splash' needs model.length to be a multiple of 128, got {m.length}; "
                         "use --config.model.attention=fused (or plain) for this length")
    if remat not in REMAT_POLICIES:
        raise ValueError(f"model.remat={remat!r}; choose one of {sorted(REMAT_POLICIES)}")


def execution_options(model_config) -> tuple[str, bool, str]:
    """(attention, scan_blocks, remat) of a `model.*` block: how the network runs, not what it computes.
    Configs written before these fields existed (and official checkpoints) get the defaults."""
    return (model_config.get("attention", EXECUTION_DEFAULTS["attention"]),
            bool(model_config.get("scan_blocks", EXECUTION_DEFAULTS["scan_blocks"])),
            model_config.get("remat", EXECUTION_DEFAULTS["remat"]))


def time_conditioning(model_config) -> bool:
    """Whether a `model.*` block's network takes sigma as input (configs written before the field existed, and
    official checkpoints, do)."""
    return bool(model_config.get("time_conditioning", True))


def get_model(config, compute_dtype: str = "float32") -> SEDD:
    """SEDD network for `config` (fields tokens, graph.type, model.*). Vocabulary = graph dim."""
    from sedd_jax import graphs

    graph = graphs.get_graph(config.graph.type, config.tokens)
    validate_model_config(config)
    compute_dtype_of(compute_dtype)
    m = config.model
    attention, scan_blocks, remat = execution_options(m)
    return SEDD(vocab_size=graph.dim, hidden_size=m.hidden_size, n_heads=m.n_heads, n_blocks=m.n_blocks,
                cond_dim=m.cond_dim, dropout=float(m.dropout), scale_by_sigma=bool(m.scale_by_sigma),
                compute_dtype=compute_dtype, attention=attention, scan_blocks=scan_blocks, remat=remat,
                time_conditioning=time_conditioning(m))


def abstract_params(model: SEDD) -> Any:
    """Shape/dtype tree (`jax.ShapeDtypeStruct` leaves) of the model's parameters, allocating nothing."""
    import flax
    import jax
    import jax.numpy as jnp

    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                               jnp.zeros((1,), jnp.float32))
    return flax.core.meta.unbox(variables["params"])


def check_param_shapes(found, expected, where: str) -> None:
    """Raises ValueError, naming `where` and the first differences, unless the tree `found` (arrays or array
    metadata: anything with `.shape`) has exactly the paths and shapes of `expected` (`abstract_params`)."""
    import jax

    def shapes(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}

    have, want = shapes(found), shapes(expected)
    problems = [f"{k} is missing" for k in sorted(set(want) - set(have))]
    problems += [f"{k} is not a parameter of this model" for k in sorted(set(have) - set(want))]
    problems += [f"{k} has shape {have[k]}, the config implies {want[k]}" for k in sorted(set(have) & set(want))
                 if have[k] != want[k]]
    if problems:
        raise ValueError(f"{where}: the parameters do not match the model of its config (tokens, graph.type, "
                         f"model.*): {'; '.join(problems[:6])}{' ...' if len(problems) > 6 else ''}")


def exp_score(model: SEDD, params, x, sigma):
    """The model's positive ratios exp(log_score) `[B, L, V]` float32 for `x` int32 `[B, L]`, `sigma` `[B]`, in
    eval mode, for samplers (pass params as a traced argument, e.g. through `jax.tree_util.Partial`, never as
    a closed-over constant)."""
    import jax.numpy as jnp

    return jnp.exp(model.apply({"params": params}, x, sigma, train=False).astype(jnp.float32))


__all__ = ["SEDD", "abstract_params", "check_param_shapes", "exp_score", "get_model", "model_config",
           "time_conditioning", "trunk_and_head", "validate_model_config", "MODEL_SIZES"]
