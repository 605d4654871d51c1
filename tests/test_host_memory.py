"""host_memory.release_freed_memory: freed heap memory leaves the resident set, memory in use stays."""

import ctypes.util
import subprocess
import sys

import pytest

# A child process without JAX's threads: 2,048 blocks of 64 KiB (below malloc's mmap threshold, so they come from
# the heap), every 16th kept, the rest freed. The kept blocks pin the heap, so glibc cannot shrink it from the top
# and keeps the ~120 MiB of holes resident until they are released.
_CHILD = """
import ctypes, sys
from sedd_jax import host_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

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


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc.so" not in (ctypes.util.find_library("c") or ""),
                    reason="malloc_trim is glibc's (Linux)")
def test_release_freed_memory_returns_freed_heap_pages_and_keeps_memory_in_use():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True).stdout.split()
    released, dropped_mib, kept_intact = out[0] == "True", int(out[1]), out[2] == "True"
    assert released
    assert dropped_mib >= 90, f"resident set fell by only {dropped_mib} MiB of ~120 MiB freed"
    assert kept_intact
