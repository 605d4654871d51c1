"""Handing the memory that XLA's compiler freed back to the operating system.

Compiling the train step of issue 8's CPU benchmark takes ~540 MiB of compiler memory. The compiler frees it when
it is done, but glibc's malloc keeps freed memory in its heaps for later allocations, so it stays in the process's
resident set, and the step's own buffers (mostly fresh `mmap`s) come on top of it: the process peaked at ~1,120 MiB
where ~860 MiB were ever in use at once (bench/README.md). `release_freed_memory()` after a compile returns the
free pages (`malloc_trim(0)`); `sedd_jax.train_step` calls it after compiling the train and eval steps on CPUs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Returns the process's freed heap memory to the operating system (glibc's `malloc_trim(0)`: the free pages of
    every malloc arena, not only those at the top of a heap). Memory in use is untouched. Returns whether any was
    released; False where the C library is not glibc."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
