"""The suite's YAML: one reader for config files and ``--set`` values, with one-line errors.

PyYAML implements YAML 1.1, which reads ``1e-3`` as a string; every config in the wild means the
float (YAML 1.2), so :class:`YAML12Loader` reads it as one. A missing, non-UTF-8 or malformed file
is a one-line :class:`~lrvd_bench.errors.BenchError` naming it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lrvd_bench.errors import BenchError


class YAML12Loader(yaml.SafeLoader):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``); YAML 1.2 and every reader mean a float."""


YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file into a mapping; a missing, non-UTF-8 or malformed file is one line."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=YAML12Loader)
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise BenchError(f"config file {path} is not UTF-8 text (byte {byte:#04x} at offset {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise BenchError(f"malformed YAML in {path}{where}: {problem}") from None
    if not isinstance(data, (dict, type(None))):
        raise BenchError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data or {}


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "methods=lora,bayeslora"]`` -> dotted overrides (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.load(text, Loader=YAML12Loader) if text.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = text
    return out
