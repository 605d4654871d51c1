"""sedd-jax: Score Entropy Discrete Diffusion (Lou, Meng, Ermon, ICML 2024) in JAX/Flax.

Core modules (import only jax/flax/optax/numpy/chex/ml_collections):
  graphs, noise, models, losses, sampling, pretrained.
"""

__version__ = "0.1.0"
