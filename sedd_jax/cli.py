"""What the command-line entry points share: an expected failure is one `error: ...` line and exit status 1."""

from __future__ import annotations

import sys
from typing import Callable

EXPECTED_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ImportError, RuntimeError, OSError)


def report_errors(body: Callable[[], int | None]) -> int:
    """Runs `body` and returns its exit status (None: 0); an expected failure prints `error: <message>` on one
    line to stderr and returns 1 (unexpected ones keep their traceback)."""
    try:
        return body() or 0
    except EXPECTED_ERRORS as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
