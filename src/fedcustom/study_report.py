"""The report of a study folder (written by `fedcustom study`): one row per cell, the gap of each
federated run to its centralized baseline, the cost of each method (trainable parameters, bytes,
client seconds, memory), and figures: accuracy per round, the accuracy-communication frontier,
the gap per cell, and final accuracy against every numeric axis (Dirichlet alpha, client count).
With several seeds, every number is the mean over seeds with its spread (min to max).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustom.errors import UserError
from fedcustom.plots import Curve
from fedcustom.report import RunFolder, fmt_bytes, load_run, pct, summarize, table
from fedcustom.report_generation import generation_parts, is_generation


@dataclass
class CellResult:
    labels: dict[str, str]
    seeds: list[int]
    fed: list[RunFolder]  # one per seed that has finished or started
    cen: list[RunFolder]

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


def gaps(cell: CellResult) -> list[float]:
    """Federated minus centralized final accuracy, per seed that has both."""
    cen = {r.config.get("seed"): summarize(r.modes["centralized"]).final
           for r in cell.cen if "centralized" in r.modes}
    return [summarize(r.modes["federated"]).final - cen[r.config["seed"]]
            for r in cell.fed if "federated" in r.modes and r.config.get("seed") in cen]


def trainable_parameters(run: RunFolder, mode: str) -> int | None:
    """Counted from the saved final state: what the method trained and exchanged. None for a
    method that exchanges something else (logits, scores): its state is no parameter count."""
    from safetensors import safe_open

    from fedcustom.methods import METHODS

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
                                                     for m in ("federated", "centralized")):
            loaded[run_id] = load_run(path)
            loaded[run_id].name = run_id
    groups: dict[str, CellResult] = {}
    for cell in index["cells"]:
        key = json.dumps(cell["labels"])
        result = groups.setdefault(key, CellResult(cell["labels"], [], [], []))
        result.seeds.append(cell["seed"])
        for mode, target in (("federated", result.fed), ("centralized", result.cen)):
            run_id = cell["runs"].get(mode)
            if run_id in loaded and loaded[run_id] not in target:
                target.append(loaded[run_id])
    if not loaded:
        raise UserError(f"{study_dir}: no run of this study has records yet")
    return index, list(groups.values())


def cells_table(axes: list[str], cells: list[CellResult]) -> str:
    rows = []
    for c in cells:
        fed_records = [r.modes["federated"] for r in c.fed if "federated" in r.modes]
        params = next((p for r in c.fed + c.cen for m in r.modes if (p := trainable_parameters(r, m))), None)
        rows.append([
            *(c.labels[a] for a in axes),
            spread(finals(c.fed, "federated")), spread(finals(c.cen, "centralized")),
            spread(gaps(c), lambda v: f"{100 * v:+.2f}"),
            "n/a" if params is None else f"{params:,}",
            spread([per_client(r) for r in fed_records], fmt_bytes),
            spread([per_client(r, "forward_passes") for r in fed_records], lambda v: f"{v:,.0f}"),
            spread([per_client(r, "backward_passes") for r in fed_records], lambda v: f"{v:,.0f}"),
            spread([summarize(r).bytes_total for r in fed_records], fmt_bytes),
            spread([summarize(r).client_seconds_per_round for r in fed_records], lambda v: f"{v:.0f}"),
            spread([summarize(r).peak_rss_mb for r in fed_records], lambda v: f"{v:.0f}"),
        ])
    return table([*axes, "federated final", "centralized final", "gap (points)", "trainable params",
                  "up / client / round", "forward / client / round", "backward / client / round",
                  "bytes sent (all rounds)", "client s / round", "peak RSS MB"],
                 rows, markdown=True)


def curves(cells: list[CellResult]) -> list[Curve]:
    """Every run's records once: federated runs named by their cell, a shared centralized
    baseline by the axes it depends on."""
    out, seen = [], set()
    for c in cells:
        for mode, runs in (("federated", c.fed), ("centralized", c.cen)):
            for run in runs:
                if mode in run.modes and (id(run), mode) not in seen:
                    seen.add((id(run), mode))
                    name = c.name() if mode == "federated" else run.name.removeprefix("cen__")
                    if mode == "federated" and len(c.seeds) > 1:
                        name += f", seed {run.config.get('seed')}"
                    out.append(Curve(f"{name} ({mode[:3]})", mode, run.modes[mode]))
    return out


def per_round_table(cells: list[CellResult]) -> str:
    by_round = [(c.label, {r["round"]: r for r in c.records}) for c in curves(cells)]
    rounds = sorted({n for _, b in by_round for n in b})
    rows = [[label, *(pct(b[n].get("test_accuracy")) if n in b else "" for n in rounds)]
            for label, b in by_round]
    return table(["run \\ round", *map(str, rounds)], rows, markdown=True)


def write_study_report(study_dir: Path, out: Path | None = None) -> Path:
    from fedcustom.results import atomic_write
    from fedcustom.study_plots import study_figures

    index, cells = load_study_results(study_dir)
    out = out or study_dir
    axes = [a["name"] for a in index["axes"]]
    generation = is_generation(cells)
    if generation:  # a causal LM's study: perplexity / ROUGE-L instead of accuracy
        results, figures = generation_parts(axes, cells, curves(cells))
    else:
        figures = study_figures(index, cells)
    timings_path = study_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    finished = len({id(r) for c in cells for r in c.fed + c.cen})
    shape = " x ".join(f"{a['name']} ({len(a['labels'])})" for a in index["axes"])
    parts = [
        f"# fedcustom study: {index['name']}", index.get("description", ""),
        f"Grid: {shape} x "
        f"seeds {index['seeds']}; {len(index['runs'])} runs, {finished} with records. "
        f"Compute: {sum(timings.values()) / 60:.1f} min of wall time for the runs made so far "
        "(timings.json).",
    ]
    if generation:
        parts += results
    else:
        parts += [
            "## Results per cell",
            "Test accuracy at the last round (federated) or epoch (centralized: one client with all "
            "training data, the same rounds x local epochs). Gap: federated minus centralized, in "
            "percentage points. Trainable parameters are counted in the saved final state; bytes are "
            "serialized payload sizes measured on the wire; forward and backward passes are single "
            "examples through the model in a client's local work (a gradient step on a batch of 8 is 8 "
            "of each; scoring 8 prompts on 16 examples with one template is 16 forwards), evaluation "
            "not counted; client seconds are summed over a round's clients."
            + (" Several seeds: mean (min..max)." if len(index["seeds"]) > 1 else ""),
            cells_table(axes, cells),
            "## Test accuracy per round", per_round_table(cells)]
    parts += ["## Figures", *(f"![{caption}]({name})" for name, (caption, _) in figures.items())]
    out.mkdir(parents=True, exist_ok=True)
    for name, (_, png) in figures.items():
        atomic_write(out / name, png)
    report = out / "report.md"
    atomic_write(report, "\n\n".join(p for p in parts if p) + "\n")
    return report
