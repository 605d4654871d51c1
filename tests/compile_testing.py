"""Configs for the ahead-of-time compile tests (tests/test_compile*.py)."""


def config_with(module, **overrides):
    """`module.get_config()` with `a__b=value` overrides of field a.b."""
    c = module.get_config()
    for path, value in overrides.items():
        node = c
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c
