"""sedd_jax.positions: choosing positions group by group, and gathering there."""

import jax.numpy as jnp
import numpy as np

from sedd_jax import positions


def test_selected_first_orders_each_group_and_counts_the_most():
    rng = np.random.default_rng(0)
    selected = rng.random((6, 5)) < 0.4                     # 3 groups of 2 rows x 5 positions
    order, most = positions.selected_first(jnp.asarray(selected), 3)
    assert order.shape == (3, 10) and order.dtype == jnp.int32
    counts = selected.reshape(3, 10).sum(axis=1)
    assert int(most) == counts.max()
    for group, row, count in zip(selected.reshape(3, 10), np.asarray(order), counts):
        assert sorted(row.tolist()) == list(range(10))      # a permutation of the group's positions
        np.testing.assert_array_equal(row[:count], np.flatnonzero(group))   # selected first, in order
        np.testing.assert_array_equal(row[count:], np.flatnonzero(~group))
    assert int(positions.selected_first(jnp.zeros((6, 5), bool), 3)[1]) == 0


def test_gather_and_rows_agree_with_indexing():
    values = jnp.arange(4 * 3 * 2).reshape(4, 3, 2)          # [B, L, 2]
    chosen = jnp.asarray([[5, 0], [1, 3]])                   # 2 groups of 2 rows x 3 positions
    np.testing.assert_array_equal(positions.rows(chosen, 4, 3), [[1, 0], [2, 3]])
    expected = np.stack([[values[1, 2], values[0, 0]], [values[2, 1], values[3, 0]]])
    np.testing.assert_array_equal(positions.gather(values, chosen), expected)
    np.testing.assert_array_equal(positions.gather(values[..., 0], chosen), expected[..., 0])
    # scatter_add is gather's transpose: <gather(v), u> = <v, scatter_add(0, u)>
    updates = jnp.arange(8.0).reshape(2, 2, 2) + 1
    added = positions.scatter_add(jnp.zeros((4, 3, 2)), chosen, updates)
    np.testing.assert_array_equal(positions.gather(added, chosen), updates)
    assert float(added.sum()) == float(updates.sum())
