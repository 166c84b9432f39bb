"""User-facing errors.

Anything a user can get wrong (a method name, a hyper-parameter, a file) raises :class:`LRVDError`
with a one-line message naming the bad value and the valid choices. Front ends (the ``bench`` CLI)
print it without a traceback; everything deeper raises ordinary exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable


class LRVDError(ValueError):
    """A one-line, user-facing error (bad name, bad value, missing file, diverged loss)."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> LRVDError:
    """Build the standard "unknown X 'v'; valid: a, b, c" error."""
    valid = ", ".join(sorted(choices)) or "(none registered)"
    return LRVDError(f"unknown {kind} {value!r}; valid choices: {valid}")
