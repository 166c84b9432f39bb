"""``bench list-methods --params``: every method hyper-parameter with its type, default and help.

Read from each method's ``Params`` dataclass (the single source: the same fields ``--param
METHOD.KEY=VALUE`` and ``method_params`` in YAML are validated against), so the listing cannot
drift from what a run accepts. Importing the methods pulls in peft: this is the one listing that
pays for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def param_rows(method_name: str) -> list[dict[str, Any]]:
    """One dict per hyper-parameter of ``method_name``: name, type, default, help."""
    from lrvd.registry import get_method

    cls = get_method(method_name)  # unknown name -> LRVDError listing the registered methods
    rows = []
    for f in dataclasses.fields(cls.Params):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append(
            {
                "name": f.name,
                "type": str(f.type).replace("typing.", ""),
                "default": default,
                "help": f.metadata.get("help", ""),
            }
        )
    return rows


def format_params(method_name: str) -> str:
    from lrvd.registry import get_method

    rows = param_rows(method_name)
    head = f"{method_name}  {getattr(get_method(method_name), 'description', '')}"
    if not rows:
        return head + "\n  (no method hyper-parameters)"
    w_name = max(len(r["name"]) for r in rows)
    w_type = max(len(r["type"]) for r in rows)
    w_def = max(len(str(r["default"])) for r in rows)
    lines = [head] + [
        f"  {r['name']:<{w_name}}  {r['type']:<{w_type}}  {str(r['default']):<{w_def}}  {r['help']}" for r in rows
    ]
    return "\n".join(lines)


def print_method_params(method_name: str | None = None) -> int:
    """Print the hyper-parameters of one method (or of all); set them with ``--param METHOD.KEY=VALUE``."""
    from lrvd.registry import list_methods

    if method_name:  # named: a broken plugin is a one-line error (exit 2)
        blocks = [format_params(method_name)]
    else:  # all: a broken third-party plugin gets its one line and the others their tables
        from lrvd.registry import METHODS

        usable, broken = METHODS.usable(list_methods())
        blocks = [
            format_params(name) if name in usable else f"{name}  (skipped: {broken[name]})" for name in list_methods()
        ]
    print("\n\n".join(blocks))
    print("\nset with: bench run --param METHOD.KEY=VALUE (or --set method_params.METHOD.KEY=VALUE)")
    return 0
