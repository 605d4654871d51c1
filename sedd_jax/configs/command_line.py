"""What the training command lines (`sedd_jax.main`, `sedd_jax.compile`) share: `--config` given by a shipped
name or a file path."""

from __future__ import annotations

import sys
import types
from typing import Callable

from sedd_jax import configs

CONFIG_HELP = (f"Config: a shipped one by name ({', '.join(configs.SHIPPED)}) or a config .py file (e.g. "
               "configs/tiny.py); --config.<field>=value overrides any field (e.g. --config.training.n_iters=1000).")


def resolve_config_argv(argv: list[str], name: str = "config") -> list[str]:
    """`argv` with the value of `--config=VALUE` / `--config VALUE` (one dash or two, before a bare `--`) turned
    into a file path by `configs.config_file`, for ml_collections' flag, which only reads files. ValueError
    when a value is neither a file nor a shipped config."""
    out, args = list(argv[:1]), iter(argv[1:])
    for arg in args:
        if arg == "--":
            out += [arg, *args]
            break
        if arg in (f"-{name}", f"--{name}"):
            value = next(args, None)
            out += [arg] if value is None else [arg, configs.config_file(value)]
        elif arg.startswith((f"-{name}=", f"--{name}=")):
            flag, value = arg.split("=", 1)
            out.append(f"{flag}={configs.config_file(value)}")
        else:
            out.append(arg)
    return out


def run(main: Callable[[list[str]], int | None], module: types.ModuleType, script: str) -> None:
    """`cli.run_absl(main, module, script)` (help under console scripts, one-line errors) with `--config=NAME`
    resolved to the shipped config's file first; a config that is neither is one error line, exit status 1."""
    from sedd_jax import cli

    try:
        argv = resolve_config_argv(sys.argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    cli.run_absl(main, module, script, argv=argv)
