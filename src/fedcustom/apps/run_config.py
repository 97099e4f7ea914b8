"""A Flower run config read as a fedcustom experiment (the ServerApp's first step).

Flower's run config is flat: the app's `[tool.flwr.app.config]` tables become dotted keys
(`train.lr`), values are strings, numbers or booleans, and `flwr run --run-config "k=v ..."` may
override only keys the app declares. Every key is a fedcustom config key, except three:

    experiment   a whole config as TOML text (the bundle `fedcustom flower submit` writes); the
                 other keys are applied on top of it
    run-dir      the run folder on the SuperLink's host ("": a new folder OUTPUT_DIR/NAME-TIME)
    resume       go on from the checkpoints in run-dir, with the config saved there

A run config holds no lists, so a list-valued key (`modes`, `method.target_modules`) takes a
comma-separated string: `modes = "federated,centralized"`.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any

from fedcustom.core.config import ComponentSpec, ConfigError, ExperimentConfig, build
from fedcustom.core.errors import UserError
from fedcustom.core.options import DEFAULT_COMPONENTS
from fedcustom.core.registry import METHODS, STRATEGIES

EXPERIMENT, RUN_DIR, RESUME = "experiment", "run-dir", "resume"


@dataclass(frozen=True)
class AppRun:
    """What the ServerApp runs: the experiment, where its run folder goes, and whether it resumes."""

    cfg: ExperimentConfig
    run_dir: Path | None  # None: a new folder under cfg.output_dir
    resume: bool = False


def app_run(run_config: Mapping[str, Any], cwd: Path) -> AppRun:
    """The experiment a Flower run config describes. Relative paths (`run-dir`, `output_dir`) are
    taken from `cwd`, the ServerApp's working directory on the SuperLink's host."""
    resume = run_config.get(RESUME, False)
    if not isinstance(resume, bool):
        raise ConfigError(f"{RESUME} = {resume!r}: expected true or false")
    folder = str(run_config.get(RUN_DIR, ""))
    run_dir = cwd / folder if folder else None
    if resume:
        if run_dir is None:
            raise ConfigError(f"{RESUME} = true needs {RUN_DIR}: the run folder on the SuperLink's host")
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"resume: {run_dir} on the SuperLink's host is not a fedcustom run folder")
        saved = tomllib.loads((run_dir / "config.toml").read_text())
        return AppRun(build(ExperimentConfig, saved), run_dir, True)  # the other keys are not read
    cfg = build(ExperimentConfig, experiment_table(run_config))
    if not cfg.engine.startswith("flower"):
        raise ConfigError(f"engine = {cfg.engine!r}: a Flower app runs on engine 'flower'")
    if run_dir is None:  # the new run folder's path, in the log, names it from anywhere
        cfg = replace(cfg, output_dir=str(cwd / cfg.output_dir))
    return AppRun(cfg, run_dir)


def experiment_table(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The nested config table: `experiment` (or, without it, engine 'flower'), then every key."""
    text = str(run_config.get(EXPERIMENT, ""))
    try:
        raw: dict[str, Any] = tomllib.loads(text) if text else {"engine": "flower"}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{EXPERIMENT}: invalid TOML: {e}") from None
    keys = [key for key in run_config if key not in (EXPERIMENT, RUN_DIR, RESUME)]
    tables = [set_key(raw, key, run_config[key]) for key in keys]
    for key, table in zip(keys, tables, strict=True):  # after all keys are in: method.name decides
        last = key.split(".")[-1]
        if isinstance(table[last], str) and typing.get_origin(hint_at(raw, key.split("."))) is tuple:
            table[last] = [toml_value(item.strip()) for item in table[last].split(",") if item.strip()]
    return raw


def set_key(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Put run-config key `a.b.c` into the nested config table; returns the table it went into."""
    *parents, last = key.split(".")
    table = raw
    for part in parents:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"run config key '{key}': '{part}' is not a table")
    table[last] = value
    return table


def hint_at(raw: dict[str, Any], path: list[str]) -> Any:
    """The type of config key `path` (None if there is none: building the config says why), the
    options of a method or strategy found from the name the config gives it."""
    cls: Any = ExperimentConfig
    for depth, part in enumerate(path):
        hint = typing.get_type_hints(cls).get(part)
        if hint is None or depth == len(path) - 1:
            return hint
        if hint is ComponentSpec:
            registry = {"method": METHODS, "strategy": STRATEGIES}[part]
            spec = raw.get(part)
            name = spec.get("name", DEFAULT_COMPONENTS[part]) if isinstance(spec, dict) else None
            try:
                cls = registry.get(str(name)).Options
            except UserError:
                return None
        elif is_dataclass(hint):
            cls = hint
        else:
            return None
    return None


def toml_value(text: str) -> Any:
    """One list item as TOML reads it (4 -> 4), a bare word as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
