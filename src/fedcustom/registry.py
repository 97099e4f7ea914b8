"""Name -> class registries for methods, strategies, engines and datasets.

Components register themselves with a decorator (`@METHODS.register("prefix")`), so adding one
never means adding a branch somewhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from fedcustom.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

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
        if name not in self._items:
            raise UserError(
                f"unknown {self.kind} '{name}'; expected one of: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
