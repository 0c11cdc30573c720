"""Command line -> config dict: YAML `--config FILE`, `--section.field VALUE` overrides, `--print-config`,
`--help` (what a user error then does: onpolicy.cli).

Generic over a `{section name: dataclass}` table (onpolicy.config_experiment.SECTIONS); the schema and its
validation live in onpolicy.config_sections / onpolicy.config_fields. CLI values are parsed as YAML scalars or
flow lists (`[a, b]`), except that string fields take the text as given ('null'/'~' = None where allowed). A dotted key
inside a dict-valued field (`--model.tiny.hidden_size 64`) is merged into that dict; a bare `--flag` means true
for bool fields only; an unknown key names the closest existing ones ("did you mean").
Left out: environment-variable overrides, per-element edits of list sections (`rewards` is set whole).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from onpolicy.config_fields import ConfigError, describe_allowed, type_hints

DEBUG_ENV = "ONPOLICY_DEBUG"  # =1: a user error keeps its traceback (as --debug does)


def load_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; a missing file, bad YAML or a non-mapping raises ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {str(p)!r}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--config: {str(p)!r} is not valid YAML:{where}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"--config: {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data or {}


def parse_value(sections: dict[str, type], key: str, text: str) -> Any:
    """A CLI value: raw text for string fields ('null'/'~' = None where allowed), else a YAML scalar/flow list."""
    section, _, name = key.partition(".")
    cls = sections.get(section)
    tp = type_hints(cls).get(name) if cls is not None else None
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    optional_str = is_union and set(typing.get_args(tp)) == {str, type(None)}
    if tp is str or optional_str:
        return None if optional_str and text in ("null", "~") else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _did_you_mean(word: str, options: list[str], cutoff: float = 0.7) -> list[str]:
    return difflib.get_close_matches(word, options, n=2, cutoff=cutoff)


def _unknown_key_message(sections: dict[str, type], key: str, lists: tuple) -> str:
    """`--key: unknown ...` with the closest existing options ("did you mean"), or the allowed names."""
    section, _, name = key.partition(".")
    if section not in sections and section not in lists:
        allowed = list(sections) + list(lists)
        close = _did_you_mean(section, allowed)
        hint = f"did you mean {', '.join(close)}?" if close else f"allowed: {', '.join(allowed)}"
        return f"--{key}: unknown section {section!r}; {hint}"
    field = name.split(".")[0]
    own = [f"{section}.{f}" for f in _did_you_mean(field, [f.name for f in dataclasses.fields(sections[section])])]
    elsewhere = {f"{s}.{f.name}": f.name for s, cls in sections.items() if s != section
                 for f in dataclasses.fields(cls)}
    same_name = [k for k, n in elsewhere.items() if n == field]
    close_names = set(_did_you_mean(field, list(elsewhere.values()), cutoff=0.8))
    close = own or same_name or [k for k, n in elsewhere.items() if n in close_names]
    if close:
        return f"--{key}: unknown field; did you mean {', '.join('--' + k for k in close)}?"
    names = ", ".join(f.name for f in dataclasses.fields(sections[section]))
    return f"--{key}: unknown field; the fields of {section}: {names}"


def apply_override(sections: dict[str, type], data: dict, key: str, value: Any, lists=("rewards",)) -> None:
    """Set dotted `key` in `data`, checking it exists: 'trainer.lr', a whole list section such as 'rewards', or
    a key inside a dict-valued field ('model.tiny.hidden_size', merged into that dict)."""
    parts = key.split(".")
    if parts[0] in lists:
        if len(parts) != 1:
            raise ConfigError(f"--{key}: set the whole list, e.g. --{parts[0]} '[{{name: math_answer}}]'")
        data[parts[0]] = value
        return
    cls = sections.get(parts[0])
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
    if len(parts) < 2 or parts[1] not in fields:
        raise ConfigError(_unknown_key_message(sections, key, tuple(lists)))
    if len(parts) > 2 and type_hints(cls).get(parts[1]) is not dict:
        raise ConfigError(f"--{key}: {parts[0]}.{parts[1]} is not a mapping; set it as --{parts[0]}.{parts[1]} VALUE")
    target, where = data, []
    for part in parts[:-1]:
        where.append(part)
        child = target.get(part)
        if child is None:
            child = target[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(where)}: expected a mapping, got {child!r}")
        target = child
    target[parts[-1]] = value


def _check_bare_flag(sections: dict[str, type], key: str) -> None:
    """`--trainer.lr` without a value: only a bool field may be given bare (it means true)."""
    section, _, name = key.partition(".")
    cls = sections.get(section)
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None) if cls is not None else None
    if field is None:
        return  # unknown keys are reported by apply_override
    tp = type_hints(cls)[name]
    if tp is bool or bool in typing.get_args(tp):
        return
    raise ConfigError(f"--{key} needs a value ({describe_allowed(tp, field.metadata)})")


def split_cli(sections: dict[str, type], argv: list[str]) -> tuple[str | None, list[tuple[str, Any]], bool]:
    """argv -> (--config path or None, [(dotted key, value)], --print-config given)."""
    config_path, overrides, print_config = None, [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; expected --config FILE or --section.field VALUE")
        key, eq, val = arg[2:].partition("=")
        key = "print_config" if key == "print-config" else key
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        takes_next = not eq and nxt is not None and not nxt.startswith("--")
        if key == "print_config":
            print_config, i = True, i + 1
        elif key == "config":
            if not eq and not takes_next:
                raise ConfigError("--config: expects a YAML file path")
            config_path, i = (val if eq else nxt), i + (1 if eq else 2)
        elif eq or takes_next:
            overrides.append((key, parse_value(sections, key, val if eq else nxt)))
            i += 1 if eq else 2
        else:  # a bare flag: boolean true (bool fields only)
            _check_bare_flag(sections, key)
            overrides.append((key, True))
            i += 1
    return config_path, overrides, print_config


def program_name(argv0: str | None = None) -> str:
    """How the user started us, for the usage line: 'python recipes/grpo.py' for a script."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if argv0.endswith(".py"):
        return f"python {argv0}"
    return os.path.basename(argv0) or "python recipes/grpo.py"


def help_text(sections: dict[str, type], extra: list[str] = (), prog: str | None = None) -> str:
    prog = program_name() if prog is None else prog
    lines = [f"usage: {prog} [--config FILE.yaml] [--section.field VALUE ...] [--print-config] [--debug]", ""]
    for name, cls in sections.items():
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            choices = f.metadata.get("choices")
            extra_text = f" {{{', '.join(choices)}}}" if choices else ""
            lines.append(f"  --{name}.{f.name}{extra_text} (default {default!r}): {f.metadata.get('help', '')}")
    lines.extend(extra)
    lines.append(f"--debug (or {DEBUG_ENV}=1): show the traceback of a config/data error instead of one line")
    return "\n".join(lines)
