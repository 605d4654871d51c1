"""A small tmpfs for disk-full tests (Linux, root or CAP_SYS_ADMIN: CI machines are like that)."""

import contextlib
import ctypes
import ctypes.util
import errno
import os
import sys

import pytest

_MS_REMOUNT, _MNT_DETACH = 32, 2


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount(target, size: str, flags: int = 0) -> int:
    return _libc().mount(b"tmpfs", str(target).encode(), b"tmpfs", flags, f"size={size}".encode())


@contextlib.contextmanager
def tmpfs(target, size: str):
    """Mounts a tmpfs of `size` (e.g. "64k", "40m") at the directory `target` (created), unmounted on exit.
    Skips the test only when mounting is not permitted here."""
    if not sys.platform.startswith("linux"):
        pytest.skip("mounting a tmpfs needs Linux")
    os.makedirs(target, exist_ok=True)
    if _mount(target, size) != 0:
        err = ctypes.get_errno()
        if err in (errno.EPERM, errno.EACCES):
            pytest.skip(f"cannot mount a tmpfs here ({os.strerror(err)}): needs root/CAP_SYS_ADMIN")
        raise OSError(err, f"mount -t tmpfs -o size={size} tmpfs {target}: {os.strerror(err)}")
    try:
        yield target
    finally:
        if _libc().umount2(str(target).encode(), _MNT_DETACH) != 0:  # never leave a mount behind
            err = ctypes.get_errno()
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def resize(target, size: str) -> None:
    """Remounts the tmpfs at `target` with a new size (not below what it holds)."""
    if _mount(target, size, _MS_REMOUNT) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -o remount,size={size} {target}: {os.strerror(err)}")
