"""Name → class registries, shared by methods and tasks.

One mechanism, modelled on lm-evaluation-harness's registry: built-ins and third-party packages
register through the same Python entry-point group (``lrvd.methods`` for adapter methods,
``lrvd.tasks`` for tasks), so a pip-installed package adds a method without touching this repo.
Entry points are resolved lazily: ``bench list-methods`` reads names without importing peft.

To add a method from another package, declare in its ``pyproject.toml``::

    [project.entry-points."lrvd.methods"]
    my-method = "my_pkg.my_method:MyMethod"

or register in-process with ``@METHODS.register("my-method")``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from lrvd.errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of named objects backed by an entry-point group.

    ``kind`` is the human word used in errors ("method", "task"); ``group`` is the entry-point group.
    """

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._local: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` in this process."""

        def decorator(obj: T) -> T:
            self._local[name] = obj
            return obj

        return decorator

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        return {ep.name: ep for ep in metadata.entry_points(group=self.group)}

    def names(self) -> list[str]:
        """All registered names, without importing any of them."""
        return sorted(set(self._local) | set(self._entry_points()))

    def get(self, name: str) -> T:
        """The object registered as ``name``; an :class:`LRVDError` listing valid names otherwise."""
        if name in self._local:
            return self._local[name]
        eps = self._entry_points()
        if name not in eps:
            raise unknown_choice(self.kind, name, self.names())
        obj = eps[name].load()
        self._local[name] = obj
        return obj

    def entry_point_value(self, name: str) -> str | None:
        """The ``module:attr`` string of an entry point (for listings that must not import)."""
        ep = self._entry_points().get(name)
        return ep.value if ep else None

    def describe(self, name: str) -> str:
        """One-line description: the object's ``description`` attribute or first docstring line."""
        obj: Any = self.get(name)
        desc = getattr(obj, "description", None) or (obj.__doc__ or "").strip().splitlines()[0:1]
        return desc if isinstance(desc, str) else (desc[0] if desc else "")


def load_object(spec: str) -> Any:
    """Import ``"package.module:Attr"``."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


METHODS: Registry[type] = Registry("method", "lrvd.methods")


def get_method(name: str) -> type:
    """The :class:`~lrvd.protocol.AdapterMethod` class registered as ``name``."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    """Names of all registered adapter methods (built-in and third-party)."""
    return METHODS.names()
