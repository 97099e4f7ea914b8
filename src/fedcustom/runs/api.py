"""The Python API (docs/python.md): `fedcustom.run`, `fedcustom.study` and the `Result` of a run.

A thin layer over what `fedcustom run` and `fedcustom study` do, so a notebook gets the same run
folders, checks and numbers as the command line, plus in-memory data and the trained model.

Overrides are keyword arguments named `section__key` (a double underscore for each dot of the
TOML key, e.g. `federation__rounds=3`, `method__name="lora"`; a top-level key is just its name,
`seed=1`); a value is a plain Python value, never parsed from text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedcustom.core.config import ConfigError, ExperimentConfig, build, load_config, read_toml, to_dict
from fedcustom.core.errors import UserError
from fedcustom.core.registry import ENGINES
from fedcustom.data.memory import IN_MEMORY, from_datasets
from fedcustom.engines.base import Engine
from fedcustom.runs.experiment import run_experiment
from fedcustom.runs.results import read_records
from fedcustom.runs.study import run_study, study_from
from fedcustom.runs.trained import TrainedModel, load_model

ConfigLike = ExperimentConfig | Mapping[str, Any] | str | os.PathLike[str] | None


@dataclass(frozen=True)
class Result:
    """A finished run: its folder, config and per-round records by mode."""

    run_dir: Path
    config: ExperimentConfig = field(repr=False)
    records: dict[str, list[dict[str, Any]]] = field(repr=False)

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Result:
        """The run in `run_dir`, e.g. one made by `fedcustom run`."""
        run_dir = Path(run_dir).absolute()  # still the run's folder after a chdir
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"{run_dir}: not a fedcustom run folder (expected {run_dir / 'config.toml'})")
        cfg = load_config(run_dir / "config.toml")
        done = [m for m in cfg.modes if (run_dir / m / "rounds.jsonl").is_file()]
        records = {m: read_records(run_dir / m) for m in done}
        return cls(run_dir, cfg, records)

    def final(self, metric: str = "test_accuracy") -> dict[str, Any]:
        """mode -> the metric's last recorded value (the final evaluation)."""
        out = {mode: [r[metric] for r in records if metric in r][-1]
               for mode, records in self.records.items() if any(metric in r for r in records)}
        if not out:
            known = sorted({k for records in self.records.values() for r in records for k in r})
            raise UserError(f"no record of {self.run_dir} has '{metric}'; recorded: {', '.join(known)}")
        return out

    def model(self, mode: str = "federated", device: str | None = None, best: bool = False) -> TrainedModel:
        """The mode's final model, ready to `.predict(texts)` (device: default the run's); `best`:
        its round of best validation accuracy instead (federation.save_best)."""
        return load_model(self.run_dir, self.config, mode, device, best)


def run(config: ConfigLike = None, /, *, data: Any = None, **overrides: Any) -> Result:
    """Run an experiment: `config` is an ExperimentConfig, a dict shaped like the TOML file, a
    TOML file's path or None (every default); `data` a datasets.Dataset or DatasetDict to train
    on instead of data.dataset (nothing of it is written to disk)."""
    cfg = make_config(config, overrides)
    if data is None:
        run_dir = ENGINES.get(cfg.engine).launch(cfg)  # an engine with its own server runs it there
        if run_dir is None:
            run_dir = next(iter(run_experiment(cfg).values())).path.parent
        return Result.load(run_dir)
    if starts_own_clients(ENGINES.get(cfg.engine)):
        raise UserError(f"data= trains in this process; engine '{cfg.engine}' starts its own clients, "
                        "which load data.dataset themselves: save the data and set data.dataset")
    # The saved config says where the data came from: nowhere a later process could read again.
    cfg = replace(cfg, data=replace(cfg.data, dataset=IN_MEMORY))
    task_data = from_datasets(data, cfg.data)  # checked before anything is written
    results = run_experiment(cfg, data=task_data)
    return Result.load(next(iter(results.values())).path.parent)


def starts_own_clients(engine: type[Engine]) -> bool:
    """Whether the engine runs a whole experiment its own way (`Engine.launch`: Flower's server
    and SuperNodes), rather than in this process."""
    return engine.launch.__func__ is not Engine.launch.__func__


def study(path: str | os.PathLike[str], /, **overrides: Any) -> Path:
    """Run (or finish) the study file at `path` (overrides as in `run`, e.g.
    `base__federation__rounds=1`); return the study folder."""
    raw = read_toml(path)
    for key, value in overrides.items():
        set_key(raw, key, value)
    return run_study(study_from(raw, path))


def make_config(config: ConfigLike, overrides: Mapping[str, Any]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        if not overrides:
            return config
        raw = to_dict(config)
    elif isinstance(config, Mapping):
        raw = plain(config)  # a copy: the caller's dict is left as it is
    elif isinstance(config, str | os.PathLike):
        raw = read_toml(config)
    elif config is None:
        raw = {}
    else:
        raise UserError(f"config: expected an ExperimentConfig, a dict, a TOML file's path or None, "
                        f"got {type(config).__name__}")
    for key, value in overrides.items():
        set_key(raw, key, value)
    return build(ExperimentConfig, raw)


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw[a][b] = value for key `a__b`; a grid key keeps its dots (`grid__partition.alpha`)."""
    *tables, last = key.split("__")
    table = raw
    for part in tables:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{key}={value!r}: '{part}' is not a table")
    table[last] = plain(value)


def plain(value: Any) -> Any:
    """A copy with paths as strings, at any depth: the config holds TOML values."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
