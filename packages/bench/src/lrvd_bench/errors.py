"""The bench's user-facing error.

:class:`BenchError` is an :class:`lrvd.LRVDError`, so the CLI catches both with one ``except`` and
prints a single line (exit code 2) instead of a traceback. Raise it only at the boundary: a bad
flag, YAML key, name or path. Everything deeper raises ordinary exceptions.
"""

from __future__ import annotations

from lrvd.errors import LRVDError, unknown_choice

__all__ = ["BenchError", "LRVDError", "unknown_choice"]


class BenchError(LRVDError):
    """A one-line, user-facing error raised by the ``bench`` command."""
