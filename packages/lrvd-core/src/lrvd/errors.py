"""User-facing errors.

Anything a user can get wrong (a method name, a hyper-parameter, a file) raises :class:`LRVDError`
with a one-line message naming the bad value and the valid choices. Front ends (the ``bench`` CLI)
print it without a traceback; everything deeper raises ordinary exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable


class LRVDError(ValueError):
    """A one-line, user-facing error (bad name, bad value, missing file, diverged loss)."""


def out_of_range(name: str, value: object, rule: str) -> LRVDError:
    """Build the standard "NAME must be RULE, got VALUE" error for one hyper-parameter."""
    return LRVDError(f"{name} must be {rule}, got {value!r}")


def check_each(params: object, rule: str, names: Iterable[str], ok) -> None:
    """Raise :func:`out_of_range` for the first of ``names`` whose value fails ``ok`` (NaN fails
    every ``>``/``>=`` rule), so the message names the one bad value rather than a group."""
    for name in names:
        value = getattr(params, name)
        if not ok(value):
            raise out_of_range(name, value, rule)


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first line of ``err``'s message (at most ``limit`` characters), or its type name when the
    message is empty: what a one-line error quotes of a library's multi-line exception."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> LRVDError:
    """Build the standard "unknown X 'v'; valid: a, b, c" error."""
    valid = ", ".join(sorted(choices)) or "(none registered)"
    return LRVDError(f"unknown {kind} {value!r}; valid choices: {valid}")
