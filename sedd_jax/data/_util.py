"""Small helpers shared by the data modules."""
from __future__ import annotations

import os
import socket


def tmp_suffix() -> str:
    """A temporary-file suffix unique per host and process (atomic writes on shared filesystems)."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}"
