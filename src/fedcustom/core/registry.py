"""Name -> class registries for methods, strategies, engines and datasets.

Components register themselves with a decorator (`@METHODS.register("prefix")`), so adding one
never means adding a branch somewhere else. The registries of the three axes live here, at the
bottom of the layers, so the config can check names (and build a component's options) without
importing any component: a registry imports its built-in components by module name the first
time it is asked for one, the way Flower loads an app from a `module:attribute` reference.

A component may need an optional package (core.extras): it says so where it registers
(`needs=`), or, for a built-in module that imports the package at its top, a `Builtin` entry
declares the names the module provides and what it needs. `require(name)` (what building a config
calls) then fails in one line naming the extra, and the other components keep working.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fedcustom.core import extras
from fedcustom.core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Builtin:
    """A module of built-in components that imports optional packages at its top: it is imported
    only when they are installed, and the names it provides are known (and fail in one line) when
    they are not."""

    module: str
    provides: tuple[str, ...]
    needs: tuple[str, ...]


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: tuple[str | Builtin, ...] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._needs: dict[str, tuple[str, ...]] = {}  # name -> optional packages it needs
        self._builtins = builtins  # modules that register the built-in components when imported
        self._waiting: dict[str, Builtin] = {}  # name -> its module, not imported for want of a package

    def _load(self) -> None:
        while self._builtins:
            entry, *rest = self._builtins
            self._builtins = tuple(rest)
            if isinstance(entry, str):
                importlib.import_module(entry)
                continue
            for name in entry.provides:
                self._needs[name] = tuple(dict.fromkeys(entry.needs + self._needs.get(name, ())))
                self._waiting[name] = entry
            self._import_waiting(entry)

    def _import_waiting(self, entry: Builtin) -> None:
        if not all(extras.installed(m) for m in entry.needs):
            return
        importlib.import_module(entry.module)
        absent = [n for n in entry.provides if n not in self._items]
        if absent:
            raise RuntimeError(f"{entry.module} does not register the {self.kind}(s) {absent} it declares")
        for name in entry.provides:
            self._waiting.pop(name, None)

    def register(self, name: str, needs: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator; `needs`: optional packages (import names, see core.extras) the component uses."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            if isinstance(item, type):
                item.name = name  # type: ignore[attr-defined]  # the registered name is the class's name
            self._items[name] = item
            if needs:
                self._needs[name] = tuple(dict.fromkeys(self._needs.get(name, ()) + needs))
            return item

        return add

    def get(self, name: str) -> T:
        """The component `name`; one whose built-in module cannot be imported says which extra to install."""
        self._load()
        if name in self._waiting:
            extras.check(self._needs[name], f"{self.kind} '{name}'")
            self._import_waiting(self._waiting[name])  # installed since the registry was first loaded
        if name not in self._items:
            raise UserError(
                f"unknown {self.kind} '{name}'; expected one of: {', '.join(self.names())}"
            )
        return self._items[name]

    def require(self, name: str) -> T:
        """`get`, and check that the optional packages the component needs are installed."""
        item = self.get(name)
        extras.check(self._needs.get(name, ()), f"{self.kind} '{name}'")
        return item

    def needs(self, name: str) -> tuple[str, ...]:
        self._load()
        return self._needs.get(name, ())

    def names(self) -> list[str]:
        """Every name, including those whose optional packages are missing."""
        self._load()
        return sorted({*self._items, *self._waiting})

    def items(self) -> list[tuple[str, T]]:
        """The components that could be imported (a built-in module missing a package is left out)."""
        self._load()
        return sorted(self._items.items())


# The three axes of an experiment. Entries are classes (Method, Strategy and Engine subclasses,
# typed Any here because their base classes live in the layers above).
METHODS: Registry[Any] = Registry("method", ("fedcustom.methods",))
STRATEGIES: Registry[Any] = Registry("strategy", ("fedcustom.strategies",))
ENGINES: Registry[Any] = Registry("engine", (
    "fedcustom.engines.simulation",
    Builtin("fedcustom.engines.flower.server", provides=("flower",), needs=("flwr",)),
    # the same module; Flower's simulation runtime needs Ray too
    Builtin("fedcustom.engines.flower.server", provides=("flower-simulation",), needs=("flwr", "ray")),
))
