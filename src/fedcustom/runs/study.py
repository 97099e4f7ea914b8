"""Studies: a grid of experiments from one TOML file, run into one results folder, resumable.

    [study]  name, seeds, description
    [base]   a complete `fedcustom run` config that every cell starts from
    [grid]   axes: `"dotted.key" = [v1, v2]`, or a table `[grid.NAME]` of
             `label = { "dotted.key" = value, ... }` (several keys per label)

A cell is one choice per axis and one seed. Each cell's federated mode is its own run folder;
its centralized baseline depends only on what the centralized run uses (not on the partition,
strategy, attack or faults), so cells that differ only there share one baseline run. Every run
is a normal run folder under STUDY_DIR/runs/, listed in STUDY_DIR/study.json. Running the same
study again skips finished runs, resumes a half-finished one from its last checkpoint, and
refuses a run folder whose saved config differs from the study's (an edited study needs a new
name).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcustom.core.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    build,
    read_toml,
    to_dict,
)
from fedcustom.core.errors import UserError
from fedcustom.core.io import atomic_write, folder_lock
from fedcustom.core.log import info
from fedcustom.runs.experiment import resume_experiment, run_experiment
from fedcustom.runs.tracking import check as check_tracking
from fedcustom.runs.tracking import with_experiment

# Config sections a centralized baseline never reads: cells differing only here share it.
NOT_CENTRALIZED = ("partition", "strategy", "attack", "faults")
NOT_CENTRALIZED_KEYS = ("federation.fraction_fit", "federation.max_norm_factor")
# Read by the centralized mode alone: the other modes' configs keep its default, so adding it to a
# study does not make its finished federated and local runs differ from the study.
ONLY_CENTRALIZED_KEYS = ("train.centralized_lr",)
STUDY_KEYS = ("name", "seeds", "description")


@dataclass(frozen=True)
class Axis:
    name: str
    labels: tuple[str, ...]
    overrides: tuple[dict[str, Any], ...]  # per label: dotted key -> value


@dataclass
class Run:
    """One run folder of the study: a cell's federated mode, or a shared centralized baseline."""

    id: str
    mode: str
    seed: int
    labels: dict[str, str]  # axis -> label, only the axes this run depends on
    config: ExperimentConfig

    def done(self, study_dir: Path) -> bool:
        folder = study_dir / "runs" / self.id / self.mode
        # a local run has no global state: its records are written once every client is done
        return (folder / "state.safetensors").is_file() or (
            self.mode == "local" and (folder / "rounds.jsonl").is_file())


@dataclass
class Cell:
    labels: dict[str, str]
    seed: int
    runs: dict[str, str] = field(default_factory=dict)  # mode -> run id


@dataclass
class Study:
    name: str
    description: str
    seeds: list[int]
    axes: list[Axis]
    cells: list[Cell]
    runs: dict[str, Run]
    base: dict[str, Any]

    def index(self) -> dict[str, Any]:
        """study.json: the plan, so a report can read the grid without the TOML file."""
        return {
            "name": self.name, "description": self.description, "seeds": self.seeds,
            "axes": [{"name": a.name, "labels": list(a.labels), "overrides": list(a.overrides)}
                     for a in self.axes],
            "cells": [{"labels": c.labels, "seed": c.seed, "runs": c.runs} for c in self.cells],
            "runs": {r.id: {"mode": r.mode, "seed": r.seed, "labels": r.labels,
                            "path": f"runs/{r.id}"} for r in self.runs.values()},
        }


def slug(text: str) -> str:
    """A folder-name-safe form of a label: '20%' -> '20', '-1.0' -> 'minus1.0'."""
    text = "minus" + text[1:] if text.startswith("-") else text
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def parse_axes(raw: Any) -> list[Axis]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("[grid] must be a table with at least one axis")
    axes = []
    for name, value in raw.items():
        if isinstance(value, list):  # shorthand: "dotted.key" = [values]
            if not value:
                raise ConfigError(f"grid.{name}: an axis needs at least one value")
            labels = tuple(json.dumps(v) if not isinstance(v, str) else v for v in value)
            overrides = tuple({name: v} for v in value)
        elif isinstance(value, dict) and value:
            bad = [label for label, o in value.items() if not isinstance(o, dict)]
            if bad:
                raise ConfigError(f"grid.{name}.{bad[0]}: expected a table of dotted.key = value")
            labels, overrides = tuple(value), tuple(value.values())
        else:
            raise ConfigError(f"grid.{name}: expected a list of values or a table of labelled overrides")
        if len({slug(label) for label in labels}) != len(labels):
            raise ConfigError(f"grid.{name}: labels {list(labels)} are not distinct as folder names")
        axes.append(Axis(name, labels, overrides))
    return axes


def cell_config(base: dict[str, Any], overrides: dict[str, Any], seed: int, mode: str,
                name: str, where: str, study: str) -> ExperimentConfig:
    raw = copy.deepcopy(base)
    for key, value in overrides.items():
        *tables, last = key.split(".")
        table = raw
        for part in tables:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: '{key}': '{part}' is not a table")
        table[last] = copy.deepcopy(value)
    raw.update(seed=seed, modes=[mode], name=name)
    if mode != "centralized":
        for key in ONLY_CENTRALIZED_KEYS:
            table, last = key.split(".")
            raw.get(table, {}).pop(last, None)
    with_experiment(raw, study)  # tracked runs of a study: one MLflow experiment named after it
    try:
        return build(ExperimentConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def matters_to_centralized(overrides: dict[str, Any]) -> bool:
    return any(k.split(".")[0] not in NOT_CENTRALIZED and k not in NOT_CENTRALIZED_KEYS
               for k in overrides)


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Read and check a study file: every cell's config is built here, before anything runs."""
    return study_from(apply_overrides(read_toml(path), list(overrides or [])), path)


def study_from(raw: dict[str, Any], path: str | Path) -> Study:
    """A study file's tables, already read (`path` gives the default name and names errors)."""
    unknown = sorted(set(raw) - {"study", "base", "grid"})
    if unknown:
        raise ConfigError(f"{path}: unknown table '{unknown[0]}'; expected [study], [base] and [grid]")
    head = raw.get("study", {})
    bad = sorted(set(head) - set(STUDY_KEYS))
    if bad:
        raise ConfigError(f"unknown key 'study.{bad[0]}'; expected one of: {', '.join(STUDY_KEYS)}")
    name = head.get("name", Path(path).stem)
    seeds = head.get("seeds", [0])
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"study.name = {name!r}: expected a non-empty name without '/'")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise ConfigError(f"study.seeds = {seeds!r}: expected a non-empty list of distinct integers")
    base = raw.get("base", {})
    modes = base.get("modes", ["federated"])
    axes = parse_axes(raw.get("grid"))
    study = Study(name, str(head.get("description", "")), seeds, axes, [], {}, base)
    for choice in itertools.product(*(range(len(a.labels)) for a in axes)):
        labels = {a.name: a.labels[i] for a, i in zip(axes, choice, strict=True)}
        merged: dict[str, Any] = {}
        for a, i in zip(axes, choice, strict=True):
            merged.update(a.overrides[i])
        for seed in seeds:
            cell = Cell(labels, seed)
            where = f"cell {labels}, seed {seed}"
            for mode in modes:
                depends = labels if mode != "centralized" else {
                    a.name: a.labels[i] for a, i in zip(axes, choice, strict=True)
                    if matters_to_centralized(a.overrides[i])}
                parts = (f"{slug(axis.split('.')[-1])}-{slug(label)}" for axis, label in depends.items())
                run_id = "__".join([mode[:3], *parts, f"seed{seed}"])
                if run_id not in study.runs:
                    cfg = cell_config(base, merged, seed, mode, run_id, where, name)
                    study.runs[run_id] = Run(run_id, mode, seed, dict(depends), cfg)
                cell.runs[mode] = run_id
            study.cells.append(cell)
    return study


def saved_config_matches(run_dir: Path, cfg: ExperimentConfig) -> bool:
    return to_dict(build(ExperimentConfig, read_toml(run_dir / "config.toml"))) == to_dict(cfg)


def run_study(study: Study, output_dir: str | Path | None = None, log: Any = info) -> Path:
    """Run every unfinished run of `study`; return the study folder."""

    out = Path(output_dir or study.base.get("output_dir", "runs")) / study.name
    for run in study.runs.values():  # refuse a changed study before running anything
        check_tracking(run.config)
        folder = out / "runs" / run.id
        if (folder / "config.toml").is_file() and not saved_config_matches(folder, run.config):
            raise UserError(f"{folder} was made with a different config than study '{study.name}' now "
                            "gives it; rename the study or delete that folder")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):  # one process runs a study folder at a time
        return run_all(study, out, log)


def run_all(study: Study, out: Path, log: Any) -> Path:
    atomic_write(out / "study.json", json.dumps(study.index(), indent=1) + "\n")
    todo = [r for r in study.runs.values() if not r.done(out)]
    log(f"study {study.name}: {len(study.cells)} cells, {len(study.runs)} runs, "
        f"{len(study.runs) - len(todo)} already done -> {out}")
    for n, run in enumerate(todo, 1):
        folder = out / "runs" / run.id
        log(f"[{n}/{len(todo)}] {run.id}")
        start = time.perf_counter()
        quiet = lambda *_: None  # noqa: E731 - the study prints one line per run
        if (folder / "config.toml").is_file():
            resume_experiment(folder, log=quiet)
        else:
            run_experiment(run.config, log=quiet, into=folder)
        timings = read_timings(out)  # re-read: another process may have finished other runs
        timings[run.id] = timings.get(run.id, 0.0) + time.perf_counter() - start
        atomic_write(out / "timings.json", json.dumps(timings, indent=1) + "\n")
        log(f"    done in {timings[run.id]:.0f} s")
    log(f"study {study.name}: all {len(study.runs)} runs done; report: fedcustom report {out}")
    return out


def read_timings(out: Path) -> dict[str, float]:
    path = out / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def describe_plan(study: Study) -> str:
    shape = " x ".join(f"{len(a.labels)} {a.name}" for a in study.axes)
    lines = [f"study {study.name}: {len(study.cells)} cells ({shape} x {len(study.seeds)} seed(s)), "
             f"{len(study.runs)} runs:"]
    lines += [f"  {r.id}" for r in study.runs.values()]
    return "\n".join(lines)
