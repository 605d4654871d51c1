"""JAX's persistent compilation cache, as the command-line entry points turn it on.

Compiling a program is slow: the train step of issue 8's CPU benchmark takes ~12 s (and ~540 MiB of compiler
memory: see sedd_jax.host_memory); SEDD-medium on a TPU pod compiles for minutes. With the cache, a rerun, a
resumed run (after a preemption) or a later sampling or evaluation of the same program loads the compiled program
from disk instead. JAX keys an entry on the program, its shardings and devices, the jax/jaxlib versions and the
XLA flags, so a changed config or a new jaxlib compiles afresh; what runs is the same program either way.

`sedd-train`, `sedd-sample`, `sedd-evaluate` and `sedd-evaluate-samples` call `enable(directory)` with their
`--compilation_cache` flag; code that calls the library directly (a notebook) may call it too. Programs that
compile in under a second are not stored (`jax_persistent_cache_min_compile_time_secs`). An entry that cannot
be read (a process killed while writing it) is reported with a warning and compiled again.
"""

from __future__ import annotations

import os

ENVIRONMENT = "JAX_COMPILATION_CACHE_DIR"
FLAG_HELP = ("directory of the persistent XLA compilation cache: reruns and resumed runs load the compiled "
             "programs instead of compiling them again; '' turns it off (default: $JAX_COMPILATION_CACHE_DIR if "
             "set, else $XDG_CACHE_HOME/sedd_jax/xla, ~/.cache/sedd_jax/xla without XDG_CACHE_HOME)")


def default_directory() -> str:
    """`$JAX_COMPILATION_CACHE_DIR` if set, else `$XDG_CACHE_HOME/sedd_jax/xla` (XDG_CACHE_HOME defaults to
    ~/.cache)."""
    if os.environ.get(ENVIRONMENT):
        return os.environ[ENVIRONMENT]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "sedd_jax", "xla")


def enable(directory: str | None = None) -> str | None:
    """Points JAX's persistent compilation cache at `directory` (None: `default_directory()`; '': off, even if
    the environment sets one) and returns the directory in use, None when off. A local directory is created if
    missing; a remote one (`gs://...`) is used as given. It takes effect from the next compile on.

    Raises OSError naming the directory when a local one cannot be created (e.g. a file is in the way)."""
    import jax  # here, so that the command lines' --help stays fast
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    if directory is None:
        directory = default_directory()
    if not directory:
        jax.config.update("jax_compilation_cache_dir", None)
        jax_cache.reset_cache()       # JAX decides at its first compile whether a cache is used: decide again
        return None
    if "://" not in directory:
        directory = os.path.abspath(os.path.expanduser(directory))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the compilation cache directory {directory} ({e.strerror or e}): pass "
                          "--compilation_cache=<a writable directory>, or --compilation_cache= to compile "
                          "without the cache") from None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax_cache.reset_cache()
    return directory
