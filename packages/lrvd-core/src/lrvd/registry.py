"""Name → class registries, shared by methods and tasks.

One mechanism, modelled on lm-evaluation-harness's registry: built-ins and third-party packages
register through the same Python entry-point group (``lrvd.methods`` for adapter methods,
``lrvd.tasks`` for tasks), so a pip-installed package adds a method without touching this repo.
Entry points are resolved lazily: ``bench list-methods`` reads names without importing peft.

To add a method from another package, declare in its ``pyproject.toml``::

    [project.entry-points."lrvd.methods"]
    my-method = "my_pkg.my_method:MyMethod"

or register in-process with ``@METHODS.register("my-method")``.

A plugin whose module raises on import (anything, not only ``ImportError``) is a one-line
:class:`PluginImportError` when it is asked for by name, and is left out, with that line as the
reason, by :meth:`Registry.usable` (what ``methods: all`` and ``bench list-methods --params`` use).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from lrvd.errors import LRVDError, first_line, unknown_choice

T = TypeVar("T")


def _origin(obj: Any) -> str:
    """``module:QualName`` of a class or function (what an entry point's value names)."""
    target = obj if isinstance(obj, type) or callable(obj) else type(obj)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(obj).__name__)}"


class Registry(Generic[T]):
    """A registry of named objects backed by an entry-point group.

    ``kind`` is the human word used in errors ("method", "task"); ``group`` is the entry-point group;
    ``check(name, obj)`` raises :class:`LRVDError` for an object that cannot serve (lm-eval checks the
    base class the same way), both at ``register`` and when an entry point is first loaded.
    """

    def __init__(self, kind: str, group: str, check: Callable[[str, Any], None] | None = None) -> None:
        self.kind = kind
        self.group = group
        self.check = check
        self._local: dict[str, T] = {}  # registered in-process
        self._loaded: dict[str, T] = {}  # entry points already imported

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` in this process.

        A name that is already taken (in-process or by an installed entry point) is refused rather
        than silently overridden; registering the very same object again is a no-op.
        """

        def decorator(obj: T) -> T:
            taken = self._local.get(name)
            ep = self._entry_points().get(name)
            if taken is not None and taken is not obj:
                raise LRVDError(
                    f"{self.kind} {name!r} is already registered (by {_origin(taken)}); choose another name"
                )
            if ep is not None and ep.value != _origin(obj):
                raise LRVDError(
                    f"{self.kind} {name!r} is already registered (entry point {ep.value}); choose another name"
                )
            if self.check is not None:
                self.check(name, obj)
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
        if name in self._loaded:
            return self._loaded[name]
        eps = [ep for ep in metadata.entry_points(group=self.group) if ep.name == name]
        if not eps:
            raise unknown_choice(self.kind, name, self.names())
        if len({ep.value for ep in eps}) > 1:
            raise LRVDError(
                f"{self.kind} {name!r} is declared by several installed packages "
                f"({', '.join(sorted({ep.value for ep in eps}))}); uninstall all but one"
            )
        try:
            obj = eps[0].load()
        except Exception as err:  # noqa: BLE001 - a third-party plugin may raise anything on import
            raise PluginImportError(self.kind, name, eps[0].value, err) from None
        if self.check is not None:
            self.check(name, obj)
        self._loaded[name] = obj
        return obj

    def usable(self, names: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
        """(names that load, {name: one-line reason} for those that do not) among ``names`` (default: all).

        For ``all``-style selections: a broken third-party plugin is left out and reported instead of
        taking every other entry down with it. Loads each entry point once.
        """
        ok, broken = [], {}
        for name in self.names() if names is None else names:
            try:
                self.get(name)
            except LRVDError as err:
                broken[name] = first_line(err)
            else:
                ok.append(name)
        return ok, broken

    def entry_point_value(self, name: str) -> str | None:
        """The ``module:attr`` string of an entry point (for listings that must not import)."""
        ep = self._entry_points().get(name)
        return ep.value if ep else None

    def describe(self, name: str) -> str:
        """One-line description: the object's ``description`` attribute or first docstring line."""
        obj: Any = self.get(name)
        desc = getattr(obj, "description", None) or (obj.__doc__ or "").strip().splitlines()[0:1]
        return desc if isinstance(desc, str) else (desc[0] if desc else "")


class PluginImportError(LRVDError):
    """A registered entry point whose module raises on import: one line naming the plugin and the error."""

    def __init__(self, kind: str, name: str, target: str, err: BaseException) -> None:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        detail = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
        super().__init__(f"{kind} {name!r} (entry point {target}) cannot be imported: {detail}")


def check_method_class(name: str, obj: Any) -> None:
    """Refuse anything but a class implementing :class:`~lrvd.protocol.AdapterMethod` (one line)."""
    from lrvd.protocol import missing_protocol_members

    if not isinstance(obj, type):
        raise LRVDError(
            f"method {name!r} must be a class implementing AdapterMethod, got {_origin(obj)} "
            f"({type(obj).__name__}); subclass lrvd.MethodBase"
        )
    missing = missing_protocol_members(obj)
    if missing:
        raise LRVDError(
            f"method {name!r} ({_origin(obj)}) does not implement the AdapterMethod protocol: "
            f"missing {', '.join(missing)}; subclass lrvd.MethodBase"
        )


METHODS: Registry[type] = Registry("method", "lrvd.methods", check=check_method_class)


def get_method(name: str) -> type:
    """The :class:`~lrvd.protocol.AdapterMethod` class registered as ``name``."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    """Names of all registered adapter methods (built-in and third-party)."""
    return METHODS.names()


def method_capability(name: str, capability: str) -> bool:
    """Whether the method registered as ``name`` declares ``capability`` (see ``lrvd.protocol.CAPABILITIES``).

    For analyses of finished runs: a method that is no longer installed reads as ``False``.
    """
    from lrvd.protocol import CAPABILITIES

    if capability not in CAPABILITIES:
        raise unknown_choice("method capability", capability, CAPABILITIES)
    try:
        cls = get_method(name)
    except LRVDError:
        return False
    return bool(getattr(cls, capability, False))
