"""Typed options from TOML: frozen dataclasses whose fields carry help text, built with errors
that name the offending key.

`opt` declares a field with its help, `check` states a field's rule in `__post_init__`, `build`
turns a TOML table into the dataclass (`ComponentSpec` fields name a registered method or strategy
whose own options dataclass takes the table's other keys) and `to_dict` goes back. The sections
of an experiment are in core/sections.py, the experiment itself in core/config.py.
"""

from __future__ import annotations

import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS, STRATEGIES


class ConfigError(UserError):
    pass


class FieldError(ValueError):
    """Raised by a dataclass's checks; the builder adds the section path to the message."""

    def __init__(self, name: str, expected: str) -> None:
        super().__init__(name)
        self.name, self.expected = name, expected


def opt(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    return field(default=default, metadata={"help": help})


def check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise FieldError(name, expected)


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component (method or strategy) by name, with its own options dataclass."""

    name: str
    options: Any


# --- building from TOML ------------------------------------------------------------------------

DEFAULT_COMPONENTS = {"method": "prefix", "strategy": "fedavg"}


def component(kind: str, raw: Any, where: str = "") -> ComponentSpec:

    registry = {"method": METHODS, "strategy": STRATEGIES}[kind]
    where = where or f"{kind}."
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where.rstrip('.')}' must be a table, got {raw!r}")
    name = raw.get("name", DEFAULT_COMPONENTS[kind])
    if not isinstance(name, str):
        raise ConfigError(f"{where}name = {name!r}: expected one of {registry.names()}")
    options = {k: v for k, v in raw.items() if k != "name"}
    return ComponentSpec(name, build(registry.require(name).Options, options, where))


def build(cls: type, raw: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, naming the offending key in every error."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where.rstrip('.') or 'config'}' must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown key '{where}{key}'; expected one of: {', '.join(known)}")
        hint = hints[key]
        if hint is ComponentSpec:
            kwargs[key] = component(key, value, f"{where}{key}.")
        elif is_dataclass(hint):
            kwargs[key] = build(hint, value, f"{where}{key}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = coerce(value, hint, f"{where}{key}")
    try:
        return cls(**kwargs)
    except FieldError as e:
        got = given(cls, kwargs, e.name)
        raise ConfigError(f"{where}{e.name} = {got!r}: expected {e.expected}") from None


def given(cls: type, kwargs: dict[str, Any], name: str) -> Any:
    """The value of field `name` (dotted: a field of a section) that cls(**kwargs) was given."""
    head, *rest = name.split(".")
    if head in kwargs:
        value = kwargs[head]
    else:
        f = next((f for f in fields(cls) if f.name == head), None)
        value = None if f is None else f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
    for part in rest:
        value = getattr(value, part, None)
    return value


def coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r}: expected one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} = {value!r}: expected a list")
        return tuple(coerce(v, args[0], key) for v in value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if ok is None:
        raise TypeError(f"config field {key} has unsupported type {hint}")
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected {getattr(hint, '__name__', hint)}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: expected a finite number")
    return float(value) if hint is float else value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=v` -> (["a", "b"], v), with v read as a TOML value (bare words are strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. federation.rounds=3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    try:  # a TOML key: dotted, and parts may be quoted (grid."partition.alpha")
        nested, path = tomllib.loads(f"{key.strip()} = 0"), []
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"--set {text!r}: {key.strip()!r} is not a valid key") from None
    while isinstance(nested, dict):
        (part, nested), = nested.items()
        path.append(part)
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        table = raw
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a table")
        table[path[-1]] = value
    return raw


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, ComponentSpec):
            out[f.name] = {"name": value.name, **asdict(value.options)}
        elif is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field, for `fedcustom methods` and docs."""
    rows = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else "(table)"
        rows.append((prefix + f.name, default, f.metadata.get("help", "")))
    return rows
