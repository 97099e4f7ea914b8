"""Tables and reports of run results: the side-by-side summary printed after a run, and
`fedcustom report`, which reads one or more run folders and writes report.md with figures.

A report is written into its folder file by file, each atomically (temp file, then rename), the
figures before report.md, so report.md never links to a missing figure. Every input is read and
checked before anything is written.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcustom.errors import UserError

NUMERIC = re.compile(r"^$|^n/a$|^[+-]?\d")  # a cell that is a number (or empty, or n/a)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def table(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """Aligned columns: plain text (all right-aligned), or a Markdown pipe table with numeric
    columns right-aligned and the others left-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    if not markdown:
        line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths, strict=False))  # noqa: E731
        return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
    right = [bool(rows) and all(NUMERIC.match(str(r[i])) for r in rows) for i in range(len(header))]

    def cells(r: list[str]) -> str:
        padded = [str(x).rjust(w) if rj else str(x).ljust(w)
                  for x, w, rj in zip(r, widths, right, strict=False)]
        return "| " + " | ".join(padded) + " |"

    rule = [f" {'-' * w}:" if rj else f":{'-' * w} " for w, rj in zip(widths, right, strict=False)]
    return "\n".join([cells(header), "|" + "|".join(rule) + "|", *map(cells, rows)])


def headline_metric(kind: str) -> str:
    """The metric a run's summary leads with: accuracy, or a generation task's perplexity."""
    return "test_perplexity" if kind == "generation" else "test_accuracy"


def side_by_side(results: dict[str, list[dict[str, Any]]], metric: str = "test_accuracy") -> str:
    """Per-round metric of each mode in columns, then totals per mode."""
    modes = list(results)
    rounds = sorted({r["round"] for records in results.values() for r in records})
    by_round = {m: {r["round"]: r for r in results[m]} for m in modes}
    rows = [[str(n)] + [f"{by_round[m][n][metric]:.4f}" if n in by_round[m] else "" for m in modes]
            for n in rounds]
    per_round = table(["round", *[f"{m} {metric}" for m in modes]], rows)
    totals = []
    for m in modes:
        trained = [r for r in results[m] if r["round"] > 0]
        last = results[m][-1]
        totals.append([
            m, f"{last[metric]:.4f}", f"{last.get('test_macro_f1', float('nan')):.4f}",
            fmt_bytes(sum(r["bytes_down"] + r["bytes_up"] for r in trained)),
            f"{sum(r['client_seconds'] for r in trained):.0f}",
            f"{sum(r['round_seconds'] for r in trained):.0f}",
            f"{max(r['peak_rss_mb'] for r in trained):.0f}",
        ])
    summary = table(["mode", metric, "macro_f1", "bytes sent", "client s", "wall s", "peak MB"],
                    totals)
    return per_round + "\n\n" + summary


# --- fedcustom report -----------------------------------------------------------------------------

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
    from fedcustom.config import read_toml
    from fedcustom.results import read_records

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


def pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def points(value: float) -> str:
    """A difference of two accuracies, in percentage points, signed."""
    return f"{100 * value:+.2f}"


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


def settings_table(runs: list[RunFolder]) -> str:
    rows = []
    for run in runs:
        scheme = run.setting("partition", "scheme")
        partition = {"dirichlet": f"Dirichlet(α={run.setting('partition', 'alpha')}) on the label",
                     "shard": f"{run.setting('partition', 'shards_per_client')} label shards per client",
                     }.get(scheme, str(scheme))
        clients = str(run.setting("partition", "num_clients"))
        fraction = run.setting("federation", "fraction_fit", 1.0)
        if isinstance(fraction, int | float) and fraction < 1:
            clients += f" ({fraction:.0%} per round)"
        rows.append([run.name, Path(str(run.setting("data", "dataset"))).name,
                     Path(str(run.setting("model", "name"))).name, str(run.setting("method", "name")),
                     str(run.setting("strategy", "name")), clients, partition,
                     str(run.setting("federation", "rounds")), ", ".join(run.modes)])
    return table(["run", "dataset", "model", "method", "strategy", "clients", "partition", "rounds",
                  "modes"], rows, markdown=True)


def results_table(runs: list[RunFolder]) -> str:
    def num(v: float, spec: str) -> str:
        return "n/a" if math.isnan(v) else format(v, spec)

    def size(v: float) -> str:
        return "n/a" if math.isnan(v) else fmt_bytes(v)

    rows = []
    for run in runs:
        for mode, records in run.modes.items():
            s = summarize(records)
            rows.append([run.label(mode), str(s.final_round), pct(s.final),
                         f"{pct(s.best)} (round {s.best_round})", num(s.macro_f1, ".3f"),
                         fmt_bytes(s.bytes_total), size(s.bytes_down_per_round), size(s.bytes_up_per_round),
                         num(s.client_seconds_per_round, ".1f"), num(s.peak_rss_mb, ".0f")])
    return table(["run / mode", "rounds", "final acc", "best acc", "macro-F1", "bytes sent",
                  "down / round", "up / round", "client s / round", "peak RSS MB"], rows, markdown=True)


def gap_table(runs: list[RunFolder]) -> str | None:
    """Federated minus centralized test accuracy, in points (negative: federated is behind)."""
    rows = []
    for run in runs:
        if "centralized" not in run.modes:
            continue
        cen = summarize(run.modes["centralized"])
        for mode, records in run.modes.items():
            if mode == "centralized":
                continue
            fed = summarize(records)
            rows.append([run.label(mode), pct(fed.final), pct(cen.final), points(fed.final - cen.final),
                         f"{pct(fed.best)} (round {fed.best_round})",
                         f"{pct(cen.best)} (round {cen.best_round})", points(fed.best - cen.best)])
    if not rows:
        return None
    return table(["federated run", "final", "centralized final", "final gap (points)", "best",
                  "centralized best", "best-vs-best gap (points)"], rows, markdown=True)


def per_round_table(runs: list[RunFolder]) -> str:
    curves = [(run.label(mode), {r["round"]: r for r in records})
              for run in runs for mode, records in run.modes.items()]
    rounds = sorted({n for _, by_round in curves for n in by_round})
    rows = [[label, *(pct(by_round[n].get("test_accuracy")) if n in by_round else "" for n in rounds)]
            for label, by_round in curves]
    return table(["run / mode \\ round", *map(str, rounds)], rows, markdown=True)


def markdown_report(runs: list[RunFolder], figures: dict[str, str]) -> str:
    title = runs[0].path.name if len(runs) == 1 else f"{len(runs)} runs"
    parts = [f"# fedcustom report: {title}",
             "Run folders: " + ", ".join(f"`{run.path}`" for run in runs),
             "## Settings", settings_table(runs),
             "## Results",
             "Test accuracy at the last round and at the best round (round 0 is the untrained start); "
             "macro-F1 at the last round. Bytes are the serialized payloads, summed over all clients "
             "(down: server to clients, up: clients to server); client seconds are summed over the "
             "round's clients. The centralized baseline trains one client on all data, so one round is "
             "one epoch.",
             results_table(runs)]
    gaps = gap_table(runs)
    if gaps is not None:
        parts += ["## Federated vs centralized",
                  "Federated minus centralized test accuracy in percentage points (negative: federated "
                  "is behind), at the last round and best round against best round.", gaps]
    parts += ["## Test accuracy per round", per_round_table(runs), "## Figures",
              *(f"![{caption}]({name})" for name, caption in figures.items())]
    return "\n\n".join(parts) + "\n"


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Read the run folders, then write the figures and report.md into `out` (default: the run
    folder when there is one, ./report when there are several). Returns report.md's path."""
    from fedcustom.plots import FIGURES, Curve
    from fedcustom.report_generation import generation_report
    from fedcustom.results import atomic_write

    if not run_dirs:
        raise UserError("report needs at least one run folder")
    runs = load_runs(run_dirs)  # every input is checked before anything is written
    out = Path(out) if out is not None else runs[0].path if len(runs) == 1 else Path("report")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    curves = [Curve(run.label(mode), mode, records) for run in runs for mode, records in run.modes.items()]
    title = runs[0].path.name if len(runs) == 1 else f"{len(runs)} runs"
    head = [f"# fedcustom report: {title}", "Run folders: " + ", ".join(f"`{run.path}`" for run in runs),
            "## Settings", settings_table(runs)]
    generation = generation_report(runs, curves, head)  # a causal LM's runs: perplexity, ROUGE-L
    if generation is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, (_, png) in generation[1].items():
            atomic_write(out / name, png)
        atomic_write(out / "report.md", generation[0])
        return out / "report.md"
    images = {name: plot(curves) for name, (_, plot) in FIGURES.items()}
    out.mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        atomic_write(out / name, png)
    report = out / "report.md"
    atomic_write(report, markdown_report(runs, {name: caption for name, (caption, _) in FIGURES.items()}))
    return report
