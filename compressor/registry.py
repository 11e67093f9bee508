"""Registry[T]: one table per concept. A key is exactly the name used in YAML and on the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from compressor.errors import RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, concept: str) -> None:
        self.concept = concept
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            self.add(name, item)
            return item

        return add

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.concept} {name!r} is registered twice")
        self._items[name] = item

    def remove(self, name: str) -> T:
        """Unregister `name` and return what it held (a plugin registered only for a while,
        e.g. a test family); an unknown name is the same error as get's."""
        item = self.get(name)
        del self._items[name]
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RecipeError(
                f"unknown {self.concept} {name!r}; allowed: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
