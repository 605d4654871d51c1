from sedd_jax.configs.owt_medium import get_config  # noqa: F401  (the shipped config, importable from the package)
