"""The knobs ``bench run`` and ``bench cost`` share, defined once so both commands spell them alike.

One flag per common setting — ``--lr``, ``--batch-size``, ``--rank``, ``--target-modules`` — plus
``--param METHOD.KEY=VALUE`` for any method hyper-parameter (``bench list-methods --params`` lists
them). Each knob maps to the dotted config key that ``bench run --set`` would use, so a flag and
``--set`` are two spellings of one setting. Standard library only: ``bench --help`` must stay fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def csv_list(text: str) -> list[str]:
    """``"query, value"`` -> ``["query", "value"]``."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


@dataclass(frozen=True)
class Knob:
    flag: str
    dest: str
    parse: Callable[[str], Any]
    key: str  # dotted config key (``bench run --set KEY=VALUE``)
    help: str
    metavar: str | None = None


KNOBS: tuple[Knob, ...] = (
    Knob("--lr", "lr", float, "train.lr", "adapter learning rate (AdamW scale; IVON's own lr is a --param)", "LR"),
    Knob("--batch-size", "batch_size", int, "train.batch_size", "training examples per micro-batch", "N"),
    Knob("--rank", "rank", int, "adapter.r", "LoRA rank r (the initial rank of adaptive methods)", "R"),
    Knob(
        "--target-modules",
        "target_modules",
        csv_list,
        "adapter.target_modules",
        "comma-separated module-name suffixes to adapt (peft semantics), e.g. query,value; "
        "bench run: auto = by the backbone's architecture",
        "NAMES",
    ),
)
PARAM_FLAG = "--param"


def add_knob_flags(
    parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None, *, default_note: str = ""
) -> None:
    """Add the shared flags to ``parser``.

    ``defaults`` maps a knob's ``dest`` to its default (``bench cost``'s built-in values); knobs
    without one default to None, i.e. "leave the config's value alone" (``bench run``), and
    ``default_note`` then says where the value comes from instead.
    """
    defaults = defaults or {}
    for knob in KNOBS:
        default = defaults.get(knob.dest)
        help_text = knob.help + (f" [{knob.key}]" if knob.key else "")
        if default is None and default_note:
            help_text += f" ({default_note})"
        parser.add_argument(
            knob.flag, dest=knob.dest, type=knob.parse, default=default, metavar=knob.metavar, help=help_text
        )
    parser.add_argument(
        PARAM_FLAG,
        dest="param",
        action="extend",
        nargs="+",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a method hyper-parameter, e.g. bayeslora.tau=2.5 (repeatable; "
        "`bench list-methods --params METHOD` lists them) [method_params.METHOD.KEY]",
    )


def parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["bayeslora.prune_every=25"]`` -> ``{"bayeslora": {"prune_every": 25}}`` (values parsed as YAML)."""
    from lrvd_bench.config import parse_set
    from lrvd_bench.errors import BenchError

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise BenchError(f"{PARAM_FLAG} expects METHOD.KEY=VALUE, got {item!r}")
        for key, value in parse_set([item]).items():
            method, sep, name = key.partition(".")
            if not sep or not method or not name:
                raise BenchError(f"{PARAM_FLAG} expects METHOD.KEY=VALUE, got {item!r}")
            out.setdefault(method, {})[name] = value
    return out


def knob_values(args: argparse.Namespace) -> dict[str, Any]:
    """``dest`` -> value of every knob flag that is set (not None)."""
    return {k.dest: getattr(args, k.dest) for k in KNOBS if getattr(args, k.dest, None) is not None}


def knob_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The set knobs as dotted config overrides (``train.lr``, ``method_params.bayeslora.tau`` …)."""
    by_dest = {k.dest: k for k in KNOBS}
    out = {by_dest[dest].key: value for dest, value in knob_values(args).items()}
    for method, params in parse_params(getattr(args, "param", []) or []).items():
        for name, value in params.items():
            out[f"method_params.{method}.{name}"] = value
    return out
