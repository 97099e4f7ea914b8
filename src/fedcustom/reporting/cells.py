"""A study's cells as reports read them: each cell's runs over seeds, and what is computed from
them (final accuracies, federated-centralized gaps, curves, bytes per client)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open

from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.core.text import pct
from fedcustom.reporting.plots import Curve
from fedcustom.reporting.runs import MODE_ORDER, Record, RunFolder, load_run, summarize


@dataclass
class CellResult:
    labels: dict[str, str]
    seeds: list[int]
    fed: list[RunFolder]  # one per seed that has finished or started
    cen: list[RunFolder]
    local: list[RunFolder] = field(default_factory=list)  # when the study runs the local mode

    def runs(self, mode: str) -> list[RunFolder]:
        return {"federated": self.fed, "centralized": self.cen, "local": self.local}[mode]

    def name(self) -> str:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.labels.items())


def finals(runs: list[RunFolder], mode: str) -> list[float]:
    return [summarize(r.modes[mode]).final for r in runs if mode in r.modes]


def spread(values: list[float], fmt: Any = pct) -> str:
    """Mean, and min..max when there are several values (one per seed)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return fmt(mean)
    return f"{fmt(mean)} ({fmt(min(values))}..{fmt(max(values))})"


def local_finals(runs: list[RunFolder]) -> str:
    """Local training's final accuracy: the mean over clients (over seeds too, with several),
    and in brackets the worst and the best client of any seed."""
    ends = [summarize(r.modes["local"]) for r in runs if "local" in r.modes]
    lows, highs = [s.final_min for s in ends], [s.final_max for s in ends]
    if not ends or any(math.isnan(v) for v in lows + highs):
        return spread([s.final for s in ends])
    return f"{pct(statistics.fmean(s.final for s in ends))} ({pct(min(lows))}..{pct(max(highs))})"


def pairs(cell: CellResult) -> list[tuple[list[Record], list[Record]]]:
    """(federated, centralized) records of each seed that has both: every federated run against
    the baseline of its own seed."""
    cen = {r.config.get("seed"): r.modes["centralized"] for r in cell.cen if "centralized" in r.modes}
    return [(r.modes["federated"], cen[r.config.get("seed")])
            for r in cell.fed if "federated" in r.modes and r.config.get("seed") in cen]


def gaps(cell: CellResult) -> list[float]:
    """Federated minus centralized final accuracy, per seed that has both."""
    return [summarize(fed).final - summarize(cen).final for fed, cen in pairs(cell)]


def trainable_parameters(run: RunFolder, mode: str) -> int | None:
    """Counted from the saved final state: what the method trained and exchanged. None for a
    method that exchanges something else (logits, scores): its state is no parameter count."""
    name = run.config.get("method", {}).get("name")
    if name not in METHODS.names() or METHODS.get(name).exchange != "weights":
        return None
    path = run.path / mode / "state.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def per_client(records: list[dict[str, Any]], key: str = "bytes_up") -> float:
    """Mean per client per round of a round total over the clients whose update arrived: bytes
    sent up, or forward / backward passes (NaN where the records do not have it)."""
    sent = [r[key] / max(1, r["accepted"] + len(r.get("rejected", [])))
            for r in records if r["round"] > 0 and r.get("bytes_up") and key in r]
    return statistics.fmean(sent) if sent else math.nan


def load_study_results(study_dir: Path) -> tuple[dict[str, Any], list[CellResult]]:
    index = json.loads((study_dir / "study.json").read_text())
    loaded: dict[str, RunFolder] = {}
    for run_id, info in index["runs"].items():
        path = study_dir / info["path"]
        if (path / "config.toml").is_file() and any((path / m / "rounds.jsonl").is_file()
                                                     for m in MODE_ORDER):
            loaded[run_id] = load_run(path)
            loaded[run_id].name = run_id
    groups: dict[str, CellResult] = {}
    for cell in index["cells"]:
        key = json.dumps(cell["labels"])
        result = groups.setdefault(key, CellResult(cell["labels"], [], [], []))
        result.seeds.append(cell["seed"])
        for mode in MODE_ORDER:
            target, run_id = result.runs(mode), cell["runs"].get(mode)
            if run_id in loaded and loaded[run_id] not in target:
                target.append(loaded[run_id])
    if not loaded:
        raise UserError(f"{study_dir}: no run of this study has records yet")
    return index, list(groups.values())


def curves(cells: list[CellResult]) -> list[Curve]:
    """Every run's records once: federated and local runs named by their cell, a shared
    centralized baseline by the axes it depends on."""
    out, seen = [], set()
    for c in cells:
        for mode in MODE_ORDER:
            for run in c.runs(mode):
                if mode in run.modes and (id(run), mode) not in seen:
                    seen.add((id(run), mode))
                    name = c.name() if mode != "centralized" else run.name.removeprefix("cen__")
                    if mode != "centralized" and len(c.seeds) > 1:
                        name += f", seed {run.config.get('seed')}"
                    out.append(Curve(f"{name} ({mode[:3]})", mode, run.modes[mode]))
    return out
