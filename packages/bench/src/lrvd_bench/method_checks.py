"""Method hyper-parameters and the ``selection:`` block, checked once in the driver before anything starts.

A method's hyper-parameters are the fields of its ``Params`` dataclass: pydantic types each value
against the field's annotation (a list is not a float), then the method's own ``__post_init__``
checks names of choices (a predictive, a criterion) and ranges. On top the suite adds one rule of
its own for every method, registered here or by a plugin: a hyper-parameter named as a learning rate
(``lr``, ``head_lr``, ``kl_lr``, ``lr_first``, ``log_sigma2_lr_mult`` …) is finite and not negative,
since a negative one trains by gradient ascent and a NaN one fails only inside the trials. Whether 0
is allowed stays the method's call (BLoB's ``kl_lr: 0`` switches its KL step off).
"""

from __future__ import annotations

import math
import re
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

from lrvd_bench.errors import BenchError, LRVDError, one_line, unknown_choice
from lrvd_bench.trial_spec import TrialSpec, check_search_key

#: A hyper-parameter name that is a learning rate or a multiplier of one.
LR_NAME = re.compile(r"(^|_)lr(_|$)")
#: selection metrics and whether higher is better
SELECTION_METRICS = {"val_nll": False, "val_accuracy": True}
SELECTION_KEYS = ("search_space", "metric", "seeds")


def registered_methods() -> list[str]:
    from lrvd.registry import list_methods

    return list_methods()


def usable_methods() -> list[str]:
    """What ``methods: all`` means: every registered method that imports; a broken plugin is skipped
    with a one-line warning (naming it by name still fails, with the same line)."""
    import sys

    from lrvd.registry import METHODS

    usable, broken = METHODS.usable()
    for reason in broken.values():
        print(f"bench: warning: skipped {reason}", file=sys.stderr)
    return usable


def method_class(name: str) -> type:
    """The registered class; a plugin whose import fails is one line naming it (the registry's
    ``PluginImportError``)."""
    from lrvd.registry import get_method

    return get_method(name)


def check_method_params(method: str, values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``values`` typed by the method's ``Params`` and accepted by the method; returns them typed
    (an int written for a float field stays as written, so trial hashes do not change)."""
    where = where or f"method_params.{method}"
    if not isinstance(values, dict):
        raise BenchError(f"{where} must be a mapping of hyper-parameters, got {values!r}")
    cls = method_class(method)
    hints = typing.get_type_hints(cls.Params)
    for key in values:
        if key not in hints:
            raise unknown_choice(f"hyper-parameter for method {method!r}:", key, hints)
    typed = {}
    for key, value in values.items():
        try:
            converted = TypeAdapter(hints[key]).validate_python(value)
        except ValidationError as err:
            raise one_line(err, prefix=(*where.split("."), key)) from None
        typed[key] = value if type(value) is int and converted == value else converted
    try:
        params = cls(**typed).params
    except LRVDError as err:
        joint = "." if re.match(r"\w+ must ", str(err)) else ": "  # "lr must be ..." -> "<where>.lr must be ..."
        raise BenchError(f"{where}{joint}{err}") from None
    for key in hints:
        value = getattr(params, key, None)
        if LR_NAME.search(key) and isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
            raise BenchError(f"{where}.{key} is a learning rate: it must be finite and >= 0, got {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise BenchError(f"{where}.{key} is NaN; it must be a number")
    return typed


def check_methods(methods: list[str], params: dict[str, Any], validation_fraction: float) -> dict[str, Any]:
    """``params`` (``method_params:``) typed; every selected method is built once, so a bad or a broken
    one fails before anything starts, and one that fits on the validation split needs that split."""
    typed = {name: check_method_params(name, params.get(name, {})) for name in methods}
    typed = {name: typed[name] if name in typed else check_method_params(name, raw) for name, raw in params.items()}
    for name in methods if validation_fraction == 0.0 else []:
        if method_class(name)(**typed.get(name, {})).needs_validation:
            raise BenchError(
                f"method {name!r} fits on the validation split; set validation_fraction > 0 (got 0) or drop the method"
            )
    return typed


def check_plans(methods: list[str], params: dict[str, Any], adapter: Any, train: Any) -> None:
    """Each method accepts the sweep's adapter and step count (``MethodBase.check_plan``: AdaLoRA needs a
    budgeting phase), so a plan it cannot train is one line before any trial instead of N failed trials. The step
    count only with ``train.max_steps``: one from epochs depends on the data, and ``attach`` checks it then."""
    from lrvd.protocol import TrainPlan

    plan = TrainPlan(total_steps=int(train.max_steps), n_train=1, train=train) if train.max_steps else None
    for name in methods:
        method = method_class(name)(**params.get(name, {}))
        try:
            if hasattr(method, "check_plan"):
                method.check_plan(adapter, plan)
        except LRVDError as err:
            raise BenchError(f"method {name!r}: {err}") from None


def selection_dotted_key(method: str, key: str) -> str:
    """A selection KEY as the dotted key :meth:`TrialSpec.with_overrides` applies."""
    head = key.partition(".")[0]
    if "." in key or head in TrialSpec.__dataclass_fields__:
        return key
    return f"method_params.{method}.{key}"


def check_selection(
    block: dict[str, Any], methods: list[str], method_params: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Check a ``selection:`` block, the method hyper-parameters at every grid value included."""
    for key in block:
        if key not in SELECTION_KEYS:
            raise unknown_choice("selection key", key, SELECTION_KEYS)
    metric = block.get("metric", "val_nll")
    if metric not in SELECTION_METRICS:
        raise unknown_choice("selection metric", metric, list(SELECTION_METRICS))
    seeds = block.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise BenchError(f"selection.seeds must list at least one integer seed, got {seeds!r}")
    space = block.get("search_space") or {}
    if not isinstance(space, dict) or not space:
        raise BenchError("selection.search_space must map at least one method to {KEY: [values]}")
    for method, grid in space.items():
        if method not in methods:
            raise unknown_choice("method in selection.search_space:", method, methods)
        if not isinstance(grid, dict) or not grid:
            raise BenchError(f"selection.search_space.{method} must map KEYs to lists of values")
        for key, values in grid.items():
            dotted = selection_dotted_key(method, key)
            if not dotted.startswith("method_params."):
                check_search_key(dotted, f"selection.search_space.{method}")
            if not isinstance(values, list) or not values:
                raise BenchError(f"selection.search_space.{method}.{key} must be a non-empty list of values")
            if dotted.startswith(f"method_params.{method}."):
                for value in values:
                    name = dotted.rpartition(".")[2]
                    check_method_params(method, {**method_params.get(method, {}), name: value})
    return block
