"""host_memory: freed heap memory leaves the resident set, memory in use stays; repeated CPU calls reuse memory."""

import ctypes.util
import os
import subprocess
import sys

import pytest

# The resident set of the child processes below, in MiB (prepended to their scripts).
_RSS_MIB = """
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
"""

_needs_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "libc.so" not in (ctypes.util.find_library("c") or ""),
    reason="malloc_trim and mallopt are glibc's (Linux)")

# A child process without JAX's threads: 2,048 blocks of 64 KiB (below malloc's mmap threshold, so they come from
# the heap), every 16th kept, the rest freed. The kept blocks pin the heap, so glibc cannot shrink it from the top
# and keeps the ~120 MiB of holes resident until they are released.
_CHILD = _RSS_MIB + """
import ctypes, sys
from sedd_jax import host_memory

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = []
for _ in range(2048):
    p = libc.malloc(64 * 1024)
    ctypes.memset(p, 1, 64 * 1024)
    blocks.append(p)
for i, p in enumerate(blocks):
    if i % 16:
        libc.free(p)
kept = [p for i, p in enumerate(blocks) if i % 16 == 0]
before = rss_mib()
released = host_memory.release_freed_memory()
after = rss_mib()
kept_intact = all(ctypes.string_at(p, 64 * 1024) == b"\\x01" * (64 * 1024) for p in kept)
print(released, round(before - after), kept_intact)
"""


@_needs_glibc
def test_release_freed_memory_returns_freed_heap_pages_and_keeps_memory_in_use():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True).stdout.split()
    released, dropped_mib, kept_intact = out[0] == "True", int(out[1]), out[2] == "True"
    assert released
    assert dropped_mib >= 90, f"resident set fell by only {dropped_mib} MiB of ~120 MiB freed"
    assert kept_intact


# A child process calling a program whose temporaries are one 128 MiB block (sin(x) and its running sum), above the
# 32 MiB up to which glibc serves allocations from its heap. Prints the minor page faults of the median call, then
# how far the resident set fell when reuse was disabled (by default, when freed memory was released: 0-72 MiB).
_STEP_CHILD = _RSS_MIB + """
import resource, sys
from sedd_jax import host_memory

reuse = sys.argv[1] == "reuse"
if reuse:
    host_memory.run_cpu_programs_inline()
import jax, jax.numpy as jnp

x = jnp.ones((4096, 4096))
program = jax.jit(lambda x: jnp.cumsum(jnp.sin(x), axis=0)[-8:]).lower(x).compile()
assert program.memory_analysis().temp_size_in_bytes >= 128 * 2**20
host_memory.release_freed_memory()  # the compiler's
if reuse:
    assert host_memory.reuse_freed_memory()
faults = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(program(x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(faults)[3]  # the median call's: the block may settle in any of the first few calls
held = rss_mib()
if reuse:
    assert host_memory.reuse_freed_memory(False)
else:
    host_memory.release_freed_memory()
print(round(faults), round(held - rss_mib()))
"""


def _step_child(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _STEP_CHILD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout.split()
    return int(out[0]), int(out[1])


@_needs_glibc
def test_repeated_cpu_calls_reuse_their_temporaries_when_run_inline_with_freed_memory_kept():
    fresh_faults, _ = _step_child("default")
    reused_faults, released_mib = _step_child("reuse")
    # 128 MiB are 32,768 pages of 4 KiB: faulted in on every call by default, in one of the first calls with reuse,
    # which keeps the block resident until reuse is disabled.
    assert fresh_faults >= 16_000, f"only {fresh_faults} minor faults per call without reuse: the block was not fresh"
    assert reused_faults < 1_000, f"{reused_faults} minor faults per call with reuse: the block was not reused"
    assert released_mib >= 96, f"the resident set fell by only {released_mib} MiB when reuse was disabled"
