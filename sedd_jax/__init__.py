"""sedd-jax: Score Entropy Discrete Diffusion (Lou, Meng, Ermon, ICML 2024) in JAX/Flax.

Core modules (import only jax/flax/optax/numpy/chex/ml_collections):
  graphs, noise, models, losses, sampling, pretrained.
The core install runs them, likelihood bounds and the sampling CLI; training needs `pip install "sedd-jax[train]"`
(TensorFlow Datasets, grain, clu), GPT-2 tokenization `[gpt2]`: a missing extra is an ImportError naming it
(sedd_jax/extras.py).
"""

__version__ = "0.1.0"
