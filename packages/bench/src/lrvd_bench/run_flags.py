"""``bench run``'s flags and help, derived from :class:`~lrvd_bench.config.ExperimentConfig`'s fields.

Every top-level key is either a flag (its field is marked ``flag``) or listed in the help under
``--set``; a flag passes its text on unparsed, so the flag, ``--set`` and YAML meet the same
validation (:func:`lrvd_bench.config.load_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lrvd_bench.config import NESTED, ExperimentConfig, default_config_path, parse_set, read_yaml
from lrvd_bench.targets import BY_ARCHITECTURE_HELP

#: Flags for nested settings common enough to deserve one (dest -> dotted key, help).
SHORTCUT_FLAGS = {
    "max_steps": ("train.max_steps", "optimizer steps per trial (train.max_steps)"),
    "task": ("tasks", "task name (same as --tasks)"),
}


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's built-in default (``default_factory`` called), for help texts."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "[]"
    return str(value)


def type_name(annotation: Any) -> str:
    """``"Annotated[float, Field(ge=0)] | None"`` -> ``"float | None"``: the type without its constraints."""
    text, out = str(annotation).replace("typing.", ""), ""
    while "Annotated[" in text:
        head, _, rest = text.partition("Annotated[")
        depth, cut, end = 0, None, len(rest)
        for i, char in enumerate(rest):
            depth += {"[": 1, "]": -1}.get(char, 0)
            if char == "," and depth == 0 and cut is None:
                cut = i
            if depth < 0:
                end = i
                break
        out, text = out + head + rest[:cut], rest[end + 1 :]
    return (out + text).replace("Mapping", "mapping")


def yaml_value(text: str) -> Any:
    """A flag's text read as ``--set`` reads it (``3`` an int, ``0,1`` left for the list validator)."""
    return parse_set([f"value={text}"])["value"]


def flag_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(ExperimentConfig) if f.metadata.get("flag")]


def add_flags(parser: Any) -> None:
    """One ``--flag`` per flagged field, plus the shortcuts. Flags default to None ("keep the config
    file's value"); the help shows the built-in default that applies when the file leaves the key out."""
    for f in flag_fields():
        default = field_default(f)
        note = "" if default is None else f" (built-in default: {shown(default)})"
        parse = str if type_name(f.type).startswith("str") else yaml_value
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=parse, default=None, help=f.metadata["help"] + note
        )
    for dest, (_, help_text) in SHORTCUT_FLAGS.items():
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, help=help_text)


def flag_overrides(args: Any) -> dict[str, Any]:
    """The dotted overrides given by flags (flags left unset contribute nothing)."""
    out = {f.name: getattr(args, f.name) for f in flag_fields() if getattr(args, f.name, None) is not None}
    for dest, (key, _) in SHORTCUT_FLAGS.items():
        if getattr(args, dest, None) is not None:
            out[key] = getattr(args, dest)
    return out


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"  {k:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {h}" for k, t, d, h in rows]


def nested_keys_help() -> str:
    """The keys without a flag and the ``train.*``/``adapter.*`` keys, with type, built-in default and
    help (``bench run --help``); every one is reachable with ``--set KEY=VALUE``."""
    top = [
        (f.name, type_name(f.type), shown(field_default(f)) if f.name not in NESTED else "", f.metadata.get("help", ""))
        for f in dataclasses.fields(ExperimentConfig)
        if not f.metadata.get("flag")
    ]
    defaults = {f.name: field_default(f) for f in dataclasses.fields(ExperimentConfig) if f.name in NESTED}
    nested = [
        (f"{prefix}.{f.name}", type_name(f.type), shown(getattr(defaults[prefix], f.name)), f.metadata.get("help", ""))
        for prefix, cls in NESTED.items()
        for f in dataclasses.fields(cls)
    ]
    return "\n".join(
        [
            "config keys without a flag (YAML, or --set KEY=VALUE; built-in defaults):",
            *_table(top),
            "config keys shared by all methods (YAML, or --set KEY=VALUE; built-in defaults):",
            *_table(nested),
            BY_ARCHITECTURE_HELP,
            "method hyper-parameters: `bench list-methods --params [METHOD]`; set them with "
            "--param METHOD.KEY=VALUE or --set method_params.METHOD.KEY=VALUE",
        ]
    )


def quickstart_help() -> str:
    """What a bare ``bench run`` runs: the default config file and its values."""
    import yaml

    path = default_config_path()
    values = yaml.safe_dump(read_yaml(path), sort_keys=False, default_flow_style=None, width=100)
    return f"A bare `bench run` runs {path.name} ({path}):\n" + "".join(f"  {line}\n" for line in values.splitlines())
