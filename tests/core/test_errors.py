"""One-line errors: what a message quotes of a library's exception."""

from __future__ import annotations

from lrvd.errors import first_line


def test_first_line_quotes_the_first_line_up_to_a_limit_and_names_a_silent_error():
    err = OSError("  disk quota exceeded\n  while writing /x/y\n")
    assert first_line(err) == "disk quota exceeded"
    assert first_line(err, 4) == "disk"
    assert first_line(KeyError()) == "KeyError"  # an empty message still says something
