"""Typed config sections: `Section` coerces each field to its annotation and checks `choices`, then runs the
section's `_validate`; `ConfigError` names the dotted field and the allowed values.

Supported annotations: str, int, float, bool, `X | None`, unions of those, `list[...]`, dict and nested
dataclasses. Coercion is strict (no bool for int, no float with a fraction for int) except that strings are
parsed for numbers: PyYAML reads `1e-5` (no dot) as a string. Left out: enums, tuples, Literal types.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A bad config key or value; the message names the dotted field and what is allowed."""


def config_field(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, factory=None):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_TYPE_HINTS: dict[type, dict[str, Any]] = {}


def type_hints(cls: type) -> dict[str, Any]:
    if cls not in _TYPE_HINTS:
        _TYPE_HINTS[cls] = typing.get_type_hints(cls)
    return _TYPE_HINTS[cls]


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value to annotation `tp` (str, int, float, bool, list[...], dict, unions with None)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for sub in (a for a in args if a is not type(None)):
            try:
                return coerce(value, sub, where)
            except ConfigError:
                pass
        names = " | ".join(_type_name(a) for a in args)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list ({_type_name(tp)}), got {value!r}")
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: expected a bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out = float(value)
        elif isinstance(value, str):  # PyYAML reads `1e-5` (no dot) as a string
            try:
                out = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a float, got {value!r}") from None
        else:
            raise ConfigError(f"{where}: expected a float, got {value!r}")
        if not math.isfinite(out):
            raise ConfigError(f"{where}: must be finite, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {field_names(tp)}, got {value!r}")
        return _build(tp, value, where)
    raise TypeError(f"config.py: unsupported annotation {tp!r} at {where}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def field_names(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))


def _build(cls: type, data: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {field_names(cls)}")
    try:
        return cls(**data)
    except ConfigError as e:  # list elements (rewards[i]) carry their index in messages
        msg = str(e)
        if cls._name and cls._name != where and msg.startswith(cls._name):
            msg = where + msg[len(cls._name):]
        raise ConfigError(msg) from None


@dataclass
class Section:
    """Base: coerce every field to its annotation, check `choices`, then run the section's `_validate`."""

    _name: ClassVar[str] = ""

    def _where(self, name: str | None = None) -> str:
        return f"{self._name}.{name}" if name else self._name

    def __post_init__(self):
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):
            where = self._where(f.name)
            value = coerce(getattr(self, f.name), hints[f.name], where)
            choices = f.metadata.get("choices")
            if choices is not None and value is not None:
                items = value if isinstance(value, list) else [value]
                bad = [v for v in items if v not in choices]
                if bad:
                    raise ConfigError(f"{where}: {bad[0]!r} is not allowed; allowed: {', '.join(map(str, choices))}")
            object.__setattr__(self, f.name, value)
        self._validate()

    def _validate(self) -> None:
        pass

    def _check(self, ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{self._where(name)}: got {getattr(self, name)!r}; allowed: {allowed}")

    def _check_nonblank(self, name: str, allowed: str) -> None:
        """A str field that must hold more than whitespace."""
        self._check(bool(getattr(self, name).strip()), name, allowed)


