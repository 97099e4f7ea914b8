"""Run folders as reports read them: the saved config and every mode's per-round records.

A record carries test_*/val_* keys only for the rounds that were evaluated (round 0 and the last
round always are; `federation.eval_every` skips those in between), so everything here reads a
metric from the records that have it: a curve skips the rounds without it, "final" is the last
record that has it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustom.core.config import read_toml
from fedcustom.core.errors import UserError
from fedcustom.core.text import pct, table
from fedcustom.runs.results import read_records

Record = dict[str, Any]
# local: every client trains alone on its own data (its records: the mean over clients, and the
# example-weighted mean, min and max as test_accuracy_weighted, _min, _max)
MODE_ORDER = ("federated", "centralized", "local")


@dataclass
class RunFolder:
    path: Path
    name: str  # the config's name; the folder name where two runs share one
    config: dict[str, Any]  # config.toml as saved (raw, so an older run still reads)
    modes: dict[str, list[dict[str, Any]]]  # mode -> per-round records, round 0 first

    def setting(self, section: str, key: str, default: Any = "?") -> Any:
        return self.config.get(section, {}).get(key, default)

    def label(self, mode: str) -> str:
        """`<run name> <mode> (<method>)`; federated curves also name their strategy (the other
        modes aggregate nothing)."""
        method = self.setting("method", "name")
        if mode in ("centralized", "local"):
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
        folders = ", ".join(f"{m}/" for m in MODE_ORDER)
        raise not_a_run(path, f"no mode folder ({folders}) with records in rounds.jsonl")
    return RunFolder(path, str(config.get("name", path.name)), config, modes)


def load_runs(paths: list[str | Path]) -> list[RunFolder]:
    unique = list({Path(p).resolve(): Path(p) for p in paths}.values())
    runs = [load_run(p) for p in unique]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:  # two runs of one config: their folders tell them apart
            run.name = run.path.name
    return runs


def has(record: Record, key: str) -> bool:
    return isinstance(record.get(key), int | float)


def evaluated(records: list[Record], key: str = "test_accuracy") -> list[Record]:
    """The records that carry a number for `key`, in round order."""
    return sorted((r for r in records if has(r, key)), key=lambda r: r["round"])


def last_value(records: list[Record], key: str) -> float:
    """`key` in the last record that has it (NaN if none does)."""
    tested = evaluated(records, key)
    return float(tested[-1][key]) if tested else math.nan


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
    final_min: float  # local mode: the worst and best client at the final round (else NaN)
    final_max: float

    def final_text(self) -> str:
        """The final accuracy; local training's with its worst and best client."""
        if math.isnan(self.final_min) or math.isnan(self.final_max):
            return pct(self.final)
        return f"{pct(self.final)} ({pct(self.final_min)}..{pct(self.final_max)})"


def summarize(records: list[Record]) -> ModeSummary:
    nan = float("nan")
    tested = evaluated(records)
    final = tested[-1] if tested else {"round": records[-1]["round"]}
    best = max(tested, key=lambda r: (r["test_accuracy"], -r["round"])) if tested else final  # earliest best
    trained = [r for r in records if r["round"] > 0]

    def mean(key: str) -> float:
        values = [r[key] for r in trained if key in r]
        return sum(values) / len(values) if values else nan

    return ModeSummary(
        final=final.get("test_accuracy", nan), final_round=final["round"],
        best=best.get("test_accuracy", nan), best_round=best["round"],
        macro_f1=last_value(records, "test_macro_f1"),
        bytes_total=sum(r.get("bytes_down", 0) + r.get("bytes_up", 0) for r in trained),
        bytes_down_per_round=mean("bytes_down"), bytes_up_per_round=mean("bytes_up"),
        client_seconds_per_round=mean("client_seconds"),
        peak_rss_mb=max((r["peak_rss_mb"] for r in records if "peak_rss_mb" in r), default=nan),
        final_min=final.get("test_accuracy_min", nan), final_max=final.get("test_accuracy_max", nan))


def per_round_table(curves: list[tuple[str, list[Record]]], key: str, fmt: Callable[[float], str],
                    corner: str = "run \\ round") -> str:
    """`key` per round, one row per labelled curve, one column per round that some curve
    evaluated; a curve's rounds without `key` stay blank."""
    by_round = [(label, {r["round"]: r[key] for r in evaluated(records, key)}) for label, records in curves]
    rounds = sorted({n for _, values in by_round for n in values})
    rows = [[label, *(fmt(values[n]) if n in values else "" for n in rounds)] for label, values in by_round]
    return table([corner, *map(str, rounds)], rows, markdown=True)
