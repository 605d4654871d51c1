"""Positions of a `[B, L]` batch chosen group by group, for computing the network's last layers and the loss at
some positions only (`losses.MaskedPositionsLoss`).

The rows are split into S equal groups (group g: rows g B/S ... (g + 1) B/S - 1; the trainer takes one group per
data shard, so that choosing and gathering stay on the shard), and `positions int[S, N]` names N of each group's
B/S x L tokens by their row-major index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gather(values: jax.Array, positions: jax.Array) -> jax.Array:
    """values `[B, L, ...]` at positions `[S, N]` -> `[S, N, ...]`."""
    groups = positions.shape[0]
    values = values.reshape(groups, -1, *values.shape[2:])  # [S, B/S x L, ...]
    index = positions.reshape(*positions.shape, *(1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1)


def rows(positions: jax.Array, batch: int, length: int) -> jax.Array:
    """The row of the batch `[B, L]` that each of positions `[S, N]` lies in: int `[S, N]`, to take per-sequence
    values (`[B, ...]`) per position."""
    groups = positions.shape[0]
    return positions // length + (jnp.arange(groups, dtype=positions.dtype) * (batch // groups))[:, None]


def scatter_add(values: jax.Array, positions: jax.Array, updates: jax.Array) -> jax.Array:
    """values `[B, L, ...]` plus updates `[S, N, ...]` at positions `[S, N]` (distinct within a group): the
    transpose of `gather`."""
    groups = positions.shape[0]
    grouped = values.reshape(groups, -1, *values.shape[2:])
    grouped = grouped.at[jnp.arange(groups)[:, None], positions].add(updates, unique_indices=True)
    return grouped.reshape(values.shape)


def selected_first(selected: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
    """Orders each group's positions with the selected ones first.

    selected: bool `[B, L]`. Returns (positions int32 `[S, B/S x L]`: the selected ones of each group first, in
    row-major order, then the others; int32 `[]`: the most positions selected in any group, so that
    `positions[:, :most]` holds every selected position, and some others where a group has fewer)."""
    selected = selected.reshape(groups, -1)
    positions = jnp.argsort(~selected, axis=1, stable=True).astype(jnp.int32)
    return positions, selected.sum(axis=1, dtype=jnp.int32).max()
