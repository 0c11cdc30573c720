"""Typed config sections: `Section` coerces each field to its annotation, checks the bounds declared with
`config_field` (`choices`, `ge`/`gt`/`le`/`lt`, `nonblank`), then runs the section's `_validate` for the
checks that relate fields; `ConfigError` names the dotted field and the allowed values.

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


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def config_field(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, factory=None,
                 *, ge=None, gt=None, le=None, lt=None, nonblank: bool = False, allowed: str | None = None):
    """A dataclass field with help text and declared bounds (checked by `Section`; None passes where the type
    allows it). `allowed` replaces the generated description of the allowed values in error messages."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if bounds:
        meta["bounds"] = bounds
    if nonblank:
        meta["nonblank"] = True
    if allowed is not None:
        meta["allowed"] = allowed
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
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {field_names(tp)}, got {value!r}")
        return _build(tp, value, where)
    raise TypeError(f"config.py: unsupported annotation {tp!r} at {where}")


def _coerce_scalar(value: Any, tp: type, where: str) -> Any:
    """bool, int, float (finite) or str; strings are parsed for numbers and true/false."""
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
    if isinstance(value, str):  # tp is str
        return value
    raise ConfigError(f"{where}: expected a string, got {value!r}")


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


def _article(tp: Any) -> str:
    return {int: "an int", float: "a float", str: "a string"}.get(tp, f"a {_type_name(tp)}")


def describe_allowed(tp: Any, meta) -> str:
    """What a field's declared bounds allow, e.g. 'an int >= 1', 'null or a float in (0, 1]'."""
    if "allowed" in meta:
        return meta["allowed"]
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    core = [a for a in args if a is not type(None)]
    base = _article(core[0]) if len(core) == 1 else " | ".join(map(_type_name, core))
    bounds = meta.get("bounds", {})
    lo = [(k, v) for k, v in bounds.items() if k in ("ge", "gt")]
    hi = [(k, v) for k, v in bounds.items() if k in ("le", "lt")]
    if lo and hi:
        (lk, lv), (hk, hv) = lo[0], hi[0]
        text = f"{base} in {'[' if lk == 'ge' else '('}{lv}, {hv}{']' if hk == 'le' else ')'}"
    elif bounds:
        text = " and ".join(f"{base} {_BOUNDS[k][0]} {v}" for k, v in bounds.items())
    elif meta.get("nonblank"):
        text = "a non-blank string"
    else:
        text = base
    return f"null or {text}" if type(None) in args else text


@dataclass
class Section:
    """Base: coerce every field to its annotation, check its declared bounds, then run `_validate`.

    `validate()` re-runs every check (after a field was assigned); construction runs it once."""

    _name: ClassVar[str] = ""

    def _where(self, name: str | None = None) -> str:
        return f"{self._name}.{name}" if name else self._name

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        hints = type_hints(type(self))
        for f in dataclasses.fields(self):
            value = coerce(getattr(self, f.name), hints[f.name], self._where(f.name))
            object.__setattr__(self, f.name, value)
            self._check_declared(f, hints[f.name], value)
        self._validate()

    def _check_declared(self, f: dataclasses.Field, tp: Any, value: Any) -> None:
        where, meta = self._where(f.name), f.metadata
        if value is None:
            return
        choices = meta.get("choices")
        if choices is not None:
            bad = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
            if bad:
                raise ConfigError(f"{where}: {bad[0]!r} is not allowed; allowed: {', '.join(map(str, choices))}")
        ok = all(_BOUNDS[k][1](value, b) for k, b in meta.get("bounds", {}).items())
        if not ok or (meta.get("nonblank") and not value.strip()):
            raise ConfigError(f"{where}: got {value!r}; allowed: {describe_allowed(tp, meta)}")

    def _validate(self) -> None:
        """Checks that relate fields (or need more than declared bounds); run after every field is coerced."""

    def _check(self, ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{self._where(name)}: got {getattr(self, name)!r}; allowed: {allowed}")


def run_dir_problem(path: str) -> str | None:
    """Why `path` cannot be a run directory (logging.output_dir), as an allowed-values phrase; None when it can."""
    import os
    from pathlib import Path

    if ".." in Path(path).parts:
        return "a path without '..' components"
    real = Path(os.path.realpath(path))
    if real == Path(real.anchor):
        return f"a directory below the filesystem root (resolves to {str(real)!r})"
    return None
