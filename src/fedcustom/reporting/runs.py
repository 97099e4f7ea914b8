"""Run folders as reports read them: the saved config and every mode's per-round records."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustom.core.config import read_toml
from fedcustom.core.errors import UserError
from fedcustom.runs.results import read_records

MODE_ORDER = ("federated", "centralized")


@dataclass
class RunFolder:
    path: Path
    name: str  # the config's name; the folder name where two runs share one
    config: dict[str, Any]  # config.toml as saved (raw, so an older run still reads)
    modes: dict[str, list[dict[str, Any]]]  # mode -> per-round records, round 0 first

    def setting(self, section: str, key: str, default: Any = "?") -> Any:
        return self.config.get(section, {}).get(key, default)

    def label(self, mode: str) -> str:
        """`<run name> <mode> (<method>)`; federated curves also name their strategy."""
        method = self.setting("method", "name")
        if mode == "centralized":
            return f"{self.name} {mode} ({method})"
        return f"{self.name} {mode} ({method}, {self.setting('strategy', 'name')})"


def not_a_run(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not a fedcustom run folder: {why}")


def load_run(path: str | Path) -> RunFolder:
    """A run folder's config and the records of every mode that has any (a run still going is
    fine: it reports the rounds done so far)."""
    path = Path(path)
    if not path.is_dir():
        raise not_a_run(path, "no such folder")
    if not (path / "config.toml").is_file():
        raise not_a_run(path, "no config.toml")
    config = read_toml(path / "config.toml")
    found = sorted((d.name for d in path.iterdir() if (d / "rounds.jsonl").is_file()),
                   key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER), m))
    modes = {}
    for mode in found:
        try:
            records = read_records(path / mode)
        except json.JSONDecodeError as e:
            raise UserError(f"{path / mode / 'rounds.jsonl'}: line {e.lineno} is not JSON") from None
        if records:
            modes[mode] = sorted(records, key=lambda r: r["round"])
    if not modes:
        raise not_a_run(path, "no mode folder (federated/, centralized/) with records in rounds.jsonl")
    return RunFolder(path, str(config.get("name", path.name)), config, modes)


def load_runs(paths: list[str | Path]) -> list[RunFolder]:
    unique = list({Path(p).resolve(): Path(p) for p in paths}.values())
    runs = [load_run(p) for p in unique]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:  # two runs of one config: their folders tell them apart
            run.name = run.path.name
    return runs


@dataclass
class ModeSummary:
    final: float
    final_round: int
    best: float
    best_round: int
    macro_f1: float
    bytes_total: float
    bytes_down_per_round: float
    bytes_up_per_round: float
    client_seconds_per_round: float
    peak_rss_mb: float


def summarize(records: list[dict[str, Any]]) -> ModeSummary:
    nan = float("nan")
    accuracy = [(r.get("test_accuracy", nan), r["round"]) for r in records]
    best = max(accuracy, key=lambda a: (not math.isnan(a[0]), a[0], -a[1]))  # earliest best round
    trained = [r for r in records if r["round"] > 0]

    def mean(key: str) -> float:
        values = [r[key] for r in trained if key in r]
        return sum(values) / len(values) if values else nan

    return ModeSummary(
        final=accuracy[-1][0], final_round=accuracy[-1][1], best=best[0], best_round=best[1],
        macro_f1=records[-1].get("test_macro_f1", nan),
        bytes_total=sum(r.get("bytes_down", 0) + r.get("bytes_up", 0) for r in trained),
        bytes_down_per_round=mean("bytes_down"), bytes_up_per_round=mean("bytes_up"),
        client_seconds_per_round=mean("client_seconds"),
        peak_rss_mb=max((r["peak_rss_mb"] for r in records if "peak_rss_mb" in r), default=nan))
