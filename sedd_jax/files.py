"""Atomic file writes with a one-line disk-full error, shared by the data caches and the trainer."""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import socket
from typing import Iterator, Optional

DEFAULT_SPACE_HINT = "free space there or point --config.data.cache_dir elsewhere, then rerun"
WORKDIR_SPACE_HINT = "free space there or use a --workdir on another disk, then rerun"

_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class DiskFullError(OSError):
    """An atomic write ran out of space (ENOSPC) or quota (EDQUOT); its message is one line.

    An OSError (errno kept), so code that handles OSError still does; the original error is chained.
    """

    def __init__(self, message: str, err: int, path: str):
        super().__init__(message)
        self.errno = err
        self.filename = None  # would make str() "[Errno ...] ...: path"; the path is in the message
        self.path = path

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):  # picklable (e.g. across worker processes) despite the custom __init__
        return type(self), (self.args[0], self.errno, self.path)


def _mount_point(path: str) -> str:
    path = os.path.dirname(os.path.abspath(path))
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}" if n < 10 * 2**20 else f"{n // 2**20}"


def disk_full_message(path: str, err: int, hint: str = DEFAULT_SPACE_HINT,
                      shown: Optional[str] = None) -> str:
    """'no space left on device writing <shown or path> (<N> MiB free on <mount>)[; ...]: <hint>'."""
    what = _NO_SPACE.get(err, os.strerror(err))
    directory, mount = os.path.dirname(os.path.abspath(path)), _mount_point(path)
    try:
        free = f"{_mib(shutil.disk_usage(directory).free)} MiB free on {mount}"
    except OSError:
        free = f"on {mount}"
    # Temporary files of writers killed with SIGKILL (not removable by them) are worth knowing about.
    # They are not deleted here: another process or host may be writing them right now.
    leftovers = []
    for p in glob.glob(os.path.join(glob.escape(directory), "*.tmp-*")):
        with contextlib.suppress(OSError):
            leftovers.append(os.path.getsize(p))
    extra = (f"; that directory also holds {len(leftovers)} *.tmp-* file(s) ({_mib(sum(leftovers))} "
             "MiB) of interrupted writes, safe to delete when no other run writes there"
             if leftovers else "")
    return f"{what} writing {shown or path} ({free}{extra}): {hint}"


def _tmp_path(path: str) -> str:
    """A temporary name next to `path`, unique per host and process (shared filesystems)."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def _names(paths) -> str:
    """Several paths in one short string: 'dir/c.{tokens.bin,offsets.bin}' when they share a stem."""
    common = os.path.commonprefix(list(paths))
    if os.path.basename(common) and all(os.sep not in p[len(common):] for p in paths):
        return common + "{" + ",".join(p[len(common):] for p in paths) + "}"
    return " and ".join(paths)


def _remove(paths) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.remove(p)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. some network filesystems)
        fd = os.open(directory or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(*paths: str, mode: str = "wb", hint: Optional[str] = None) -> Iterator:
    """Writes `paths` all-or-nothing: yields open temporary files (one file for one path, else a tuple).

        with atomic_write(path) as f: f.write(payload)
        with atomic_write(a, b) as (fa, fb): ...

    Success: each file is flushed, fsynced, closed and `os.replace`d onto its path, in order (a reader
    never sees a partial file; write a completion marker last, in a separate call). Any exception in the
    body or while finishing, KeyboardInterrupt and SystemExit (a SIGTERM handler's exit) included,
    removes every temporary file and re-raises; what was at `paths` before stays untouched unless its
    replacement already happened. Running out of space (ENOSPC) or quota (EDQUOT) is re-raised as a
    DiskFullError with a one-line message naming the path, the free space and `hint` (what the user
    can do; default: free space or move --config.data.cache_dir).
    """
    if not paths:
        raise TypeError("atomic_write needs at least one path")
    tmps = [_tmp_path(p) for p in paths]
    files = []
    current = paths[0]
    try:
        try:
            for p, t in zip(paths, tmps):
                current = p
                files.append(open(t, mode))
            current = paths[0] if len(paths) == 1 else None
            yield files[0] if len(paths) == 1 else tuple(files)
            for p, f in zip(paths, files):
                current = p
                f.flush()
                os.fsync(f.fileno())
                f.close()
            for p, t in zip(paths, tmps):
                current = p
                os.replace(t, p)
            for d in dict.fromkeys(os.path.dirname(p) for p in paths):
                _fsync_dir(d)
        except BaseException:
            for f in files:
                with contextlib.suppress(OSError):
                    f.close()  # may flush buffered data and fail again on a full disk
            _remove(tmps)
            raise
    except OSError as e:
        if e.errno not in _NO_SPACE or isinstance(e, DiskFullError):
            raise
        # In the body any of the files may have been written: all are named then.
        path, shown = current or paths[0], current or _names(paths)
        raise DiskFullError(disk_full_message(path, e.errno, hint or DEFAULT_SPACE_HINT, shown),
                            e.errno, path) from e


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, ran out of space or quota: an OSError with errno
    ENOSPC/EDQUOT, or an orbax/tensorstore error (a ValueError) whose message says so."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return True
        if any(os.strerror(code) in str(error) for code in _NO_SPACE):
            return True
        error = error.__cause__ or error.__context__
    return False
