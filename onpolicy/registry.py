"""Name -> object tables filled by a `register(name)` decorator (rewards, environments).

Registering a second, different object under a taken name raises ValueError; registering the same function or
class again (a module imported twice, e.g. under two names) is allowed. Left out: unregistering, scoping.
"""
from __future__ import annotations

from typing import Callable


def _same(old, new) -> bool:
    return old is new or getattr(old, "__qualname__", None) == getattr(new, "__qualname__", 0)


class Registry(dict):
    """`registry.register(name)` is the decorator; the registry itself maps names to what was registered."""

    def __init__(self, decorator_name: str, reserved: str = ""):
        super().__init__()
        self.decorator_name, self.reserved = decorator_name, reserved

    def register(self, name: str) -> Callable:
        rule = f"a non-empty string without {self.reserved!r}" if self.reserved else "a non-empty string"
        if not isinstance(name, str) or not name or (self.reserved and self.reserved in name):
            raise ValueError(f"{self.decorator_name}: name must be {rule}, got {name!r}")

        def deco(obj):
            if not callable(obj):
                raise ValueError(f"{self.decorator_name}({name!r}): expected a callable, got {type(obj).__name__}")
            old = self.get(name)
            if old is not None and not _same(old, obj):
                raise ValueError(f"{self.decorator_name}: name {name!r} is already taken by "
                                 f"{old.__module__}.{old.__qualname__}")
            self[name] = obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self)
