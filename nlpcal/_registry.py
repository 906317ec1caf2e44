"""A name -> class registry, used for calibration losses and post-hoc calibrators."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """Maps lowercase snake_case names to classes.

    >>> reg = Registry("widget")
    >>> @reg.register("round_widget")
    ... class RoundWidget:
    ...     def __init__(self, radius: float = 1.0):
    ...         self.radius = radius
    >>> reg.create("round_widget", radius=2.0).radius
    2.0
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name must be lowercase snake_case, got {name!r}")

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to {self._entries[name].__qualname__}"
                )
            self._entries[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
