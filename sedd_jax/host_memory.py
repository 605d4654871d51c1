"""Handing the memory that XLA's compiler freed back to the operating system, and keeping the memory a CPU step frees.

Compiling the train step of issue 8's CPU benchmark takes ~540 MiB of compiler memory. The compiler frees it when
it is done, but glibc's malloc keeps freed memory in its heaps for later allocations, so it stays in the process's
resident set, and the step's own buffers (mostly fresh `mmap`s) come on top of it: the process peaked at ~1,120 MiB
where ~860 MiB were ever in use at once (bench/README.md). `release_freed_memory()` after a compile returns the
free pages (`malloc_trim(0)`); `sedd_jax.train_step` calls it after compiling the train and eval steps on CPUs.

XLA's CPU runtime allocates a call's temporaries as one block (183 MB for that step), far above the 32 MiB up to which
glibc serves allocations from its heaps, so by default every call gets a fresh `mmap` whose pages the kernel faults
in (and zeroes) one by one: ~45,800 minor faults and ~85 ms of kernel time per step. Two settings let each call
reuse the block the previous one freed instead (1.1x the step's speed; bench/README.md):
`run_cpu_programs_inline()` before JAX starts, so that calls allocate on the calling thread, whose heap (glibc's
main arena) can hold such a block (the other threads' heaps are at most 64 MiB), and `reuse_freed_memory()` while
a program is called again and again, so that malloc serves the block from that heap and keeps it when it is freed.
`sedd-train` and bench/train_step.py call the first; the trainer (sedd_jax.train) enables the second for its runs
of train steps on CPUs and disables it around evals, checkpoints and sampling.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


# glibc's mallopt parameters (malloc.h), its default M_MMAP_MAX and the largest mmap threshold it adapts to (64-bit).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX, _MMAP_THRESHOLD_MAX, _INT_MAX = 65536, 32 * 2**20, 2**31 - 1
_reusing = False  # the state reuse_freed_memory last set


@functools.cache
def _glibc_function(name: str):
    """glibc's `malloc_trim` or `mallopt`, or None where the C library has none (macOS, musl)."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Returns the process's freed heap memory to the operating system (glibc's `malloc_trim(0)`: the free pages of
    every malloc arena, not only those at the top of a heap). Memory in use is untouched. Returns whether any was
    released; False where the C library is not glibc."""
    trim = _glibc_function("malloc_trim")
    return bool(trim(0)) if trim is not None else False


def run_cpu_programs_inline() -> None:
    """Has JAX run each CPU program on the thread that calls it (`jax_cpu_enable_async_dispatch=False`) rather than
    on its worker threads, so that the call's temporaries are allocated by that thread: from glibc's main arena when
    it is the main thread, which `reuse_freed_memory()` can then keep for the next call. The caller waits for the
    result (what JAX returns is ready); accelerators are unaffected. Takes effect only if called before JAX creates
    its CPU client (its first computation or `jax.devices()`): the command lines call it first thing."""
    import jax  # here, so that importing this module stays cheap

    jax.config.update("jax_cpu_enable_async_dispatch", False)


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Switches glibc's malloc between keeping freed memory for reuse and glibc's usual handing back of it.

    Enabled: every allocation is served from the heap (`mallopt(M_MMAP_MAX, 0)`: no `mmap` per large allocation) and
    freed memory stays there for the next allocations (`mallopt(M_TRIM_THRESHOLD, INT_MAX)`), so a repeated call's
    temporaries reuse the pages its previous call freed instead of being faulted in afresh (with
    `run_cpu_programs_inline()`; only allocations of the main thread, glibc's main arena, as the other threads'
    heaps are at most 64 MiB). Meant for a run of calls of one program: between different programs the heap can
    hold what each left, so the trainer disables it around evals, checkpoints and sampling.

    Disabled: allocations of 32 MiB and more are mapped afresh and a heap gives back free memory above 64 MiB at
    its top, where glibc's adaptive thresholds settle in a process that frees such blocks (which setting them
    fixes), and the freed memory held now is returned (`release_freed_memory()`).

    Process-wide; a call that asks for the state already set does nothing. Returns whether the settings took,
    False where the C library is not glibc."""
    global _reusing
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    if enabled == _reusing:
        return True
    if enabled:
        took = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    else:
        took = (bool(mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)) and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
                and bool(mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)))
        release_freed_memory()
    _reusing = enabled
    return took
