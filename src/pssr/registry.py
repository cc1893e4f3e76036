"""One registry pattern for everything with variants (datasets, models, scorers, attacks, defenses).

Register with a decorator, build with ``create(name, **kw)``, discover with ``list(pattern)``::

    MODELS = Registry("model")

    @MODELS.register("small-cnn")
    def small_cnn(num_classes: int = 10) -> nn.Module: ...

    MODELS.create("small-cnn", num_classes=10)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> builder table with clear errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        if not name or name != name.strip().lower():
            raise ValueError(f"{self.kind} name must be a non-empty lower-case string, got {name!r}")

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        key = name.strip().lower() if isinstance(name, str) else name
        if key not in self._builders:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._builders))}")
        return self._builders[key]

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._builders

    def __len__(self) -> int:
        return len(self._builders)
