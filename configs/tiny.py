from sedd_jax.configs.tiny import get_config  # noqa: F401  (the shipped config, importable from the package)
