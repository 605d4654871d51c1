from sedd_jax.configs.text8 import get_config  # noqa: F401  (the shipped config, importable from the package)
