"""Dense rate matrices and their exponentials, for checking the graphs against closed forms.

(Exact concrete scores of known distributions live in tests/exact_scores.py.)
"""

import jax.numpy as jnp
import numpy as np
import scipy.linalg


def rate_matrix(graph) -> np.ndarray:
    """Dense Q `[dim, dim]` float64 with column x = graph.rate(x)."""
    return np.stack([np.asarray(graph.rate(jnp.asarray(x)), np.float64) for x in range(graph.dim)], axis=1)


def expm_rate(graph, sigma: float) -> np.ndarray:
    """expm(sigma Q) `[dim, dim]`; column x is p_{t|0}(. | x)."""
    return scipy.linalg.expm(sigma * rate_matrix(graph))
