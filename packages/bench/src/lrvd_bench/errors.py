"""The bench's user-facing error.

:class:`BenchError` is an :class:`lrvd.LRVDError`, so the CLI catches both with one ``except`` and
prints a single line (exit code 2) instead of a traceback. Raise it only at the boundary: a bad
flag, YAML key, name or path. Everything deeper raises ordinary exceptions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lrvd.errors import LRVDError, unknown_choice

__all__ = ["BenchError", "LRVDError", "one_line", "unknown_choice"]


class BenchError(LRVDError):
    """A one-line, user-facing error raised by the ``bench`` command."""


def one_line(
    error: Any,
    source: str | Callable[[str], str] = "",
    prefix: tuple = (),
    valid_keys: Callable[[str], list[str]] | None = None,
) -> LRVDError:
    """The first problem of a pydantic ``ValidationError`` as one line: the dotted key, the bad value
    and what is valid. A check's own :class:`LRVDError` (raised in a ``__post_init__``) passes
    through, led by the key it was raised under; ``source`` (or ``source(key)``) names where the value
    came from; ``valid_keys(parent)`` lists the keys an unknown key could have been."""
    first = error.errors()[0]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (*prefix, *first["loc"])).lstrip(".")
    where = source(key) if callable(source) else source
    where = f" in {where}" if where else ""
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, LRVDError):
        joint = (
            "." if re.match(r"\w+ must ", str(cause)) else ": "
        )  # "train" + "lr must be ..." -> "train.lr must be ..."
        return BenchError(f"{key}{joint}{cause}") if key else cause
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        valid = valid_keys(key.rpartition(".")[0]) if valid_keys else []
        return BenchError(f"unknown key {key!r}{where}" + (f"; valid keys: {', '.join(valid)}" if valid else ""))
    if first["type"] == "literal_error":
        return BenchError(f"unknown {key} {first['input']!r}; valid choices: {first['ctx']['expected']}")
    message = first["msg"][:1].lower() + first["msg"][1:]
    return BenchError(f"bad value for {key}{where}: {first['input']!r} ({message})")
