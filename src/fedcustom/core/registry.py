"""Name -> class registries for methods, strategies, engines and datasets.

Components register themselves with a decorator (`@METHODS.register("prefix")`), so adding one
never means adding a branch somewhere else. The registries of the three axes live here, at the
bottom of the layers, so the config can check names (and build a component's options) without
importing any component: a registry imports its built-in components by module name the first
time it is asked for one, the way Flower loads an app from a `module:attribute` reference.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from fedcustom.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = builtins  # modules that register the built-in components when imported

    def _load(self) -> None:
        while self._builtins:
            module, *rest = self._builtins
            self._builtins = tuple(rest)
            importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            if isinstance(item, type):
                item.name = name  # type: ignore[attr-defined]  # the registered name is the class's name
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise UserError(
                f"unknown {self.kind} '{name}'; expected one of: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())


# The three axes of an experiment. Entries are classes (Method, Strategy and Engine subclasses,
# typed Any here because their base classes live in the layers above).
METHODS: Registry[Any] = Registry("method", ("fedcustom.methods",))
STRATEGIES: Registry[Any] = Registry("strategy", ("fedcustom.strategies",))
ENGINES: Registry[Any] = Registry("engine", ("fedcustom.engines.simulation",
                                             "fedcustom.engines.flower.server"))
