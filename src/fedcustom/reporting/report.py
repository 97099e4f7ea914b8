"""Tables and reports of run results: the side-by-side summary printed after a run, and
`fedcustom report`, which reads one or more run folders and writes report.md with figures.

A report is written into its folder file by file, each atomically (temp file, then rename), the
figures before report.md, so report.md never links to a missing figure. Every input is read and
checked before anything is written.
"""

from __future__ import annotations

import math
from pathlib import Path

from fedcustom.core.errors import UserError
from fedcustom.core.io import atomic_write
from fedcustom.core.text import fmt_bytes, pct, points, table
from fedcustom.reporting.convergence import (
    EXPLAINED,
    FRACTIONS,
    Plateau,
    Reached,
    Reference,
    convergence,
    fraction_label,
)
from fedcustom.reporting.generation import generation_report
from fedcustom.reporting.plots import FIGURES, Curve
from fedcustom.reporting.runs import RunFolder, load_runs, per_round_table, summarize
from fedcustom.runs.tracking import log_report

LOCAL = (" Local: every client trains alone on its own data; its accuracy is the mean over the "
         "clients' own models, with the worst and the best client in brackets at the final round.")


def settings_table(runs: list[RunFolder]) -> str:
    rows = []
    for run in runs:
        scheme = run.setting("partition", "scheme")
        alpha = run.setting("partition", "alpha")
        partition = {"dirichlet": f"Dirichlet(α={alpha}) on the label",
                     "dirichlet-balanced": f"Dirichlet(α={alpha}) on the label, equal client sizes",
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
            rows.append([run.label(mode), str(s.final_round), s.final_text(),
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
            if mode in ("centralized", "local"):
                continue
            fed = summarize(records)
            rows.append([run.label(mode), pct(fed.final), pct(cen.final), points(fed.final - cen.final),
                         f"{pct(fed.best)} (round {fed.best_round})",
                         f"{pct(cen.best)} (round {cen.best_round})", points(fed.best - cen.best)])
    if not rows:
        return None
    return table(["federated run", "final", "centralized final", "final gap (points)", "best",
                  "centralized best", "best-vs-best gap (points)"], rows, markdown=True)


def reached_cells(reached: Reached | None) -> list[str]:
    return ["not reached", "n/a"] if reached is None else [str(reached.round), fmt_bytes(reached.bytes)]


def plateau_text(plateau: Plateau | None) -> str:
    if plateau is None:
        return "n/a"
    return (f"{'yes' if plateau.flat else 'no'} ({100 * plateau.spread:.2f} over rounds "
            f"{plateau.first_round}-{plateau.last_round})")


def convergence_table(runs: list[RunFolder]) -> str | None:
    """Each federated mode against the centralized reference of its own run folder."""
    rows = []
    for run in runs:
        if "federated" not in run.modes or "centralized" not in run.modes:
            continue
        result = convergence(run.modes["federated"], run.modes["centralized"])
        if result is None:
            continue
        ref, sel = result.reference, result.selected
        rows.append([run.label("federated"), chosen_text(ref),
                     *(cell for f in FRACTIONS for cell in reached_cells(result.reached[f])),
                     plateau_text(result.plateau), chosen_text(sel), pct(sel.accuracy / ref.accuracy)])
    if not rows:
        return None
    return table(["federated run", "centralized reference",
                  *(f"{fraction_label(f)}: {what}" for f in FRACTIONS for what in ("round", "bytes")),
                  "plateau (spread, points)", "federated, selected", "selected / reference"],
                 rows, markdown=True)


def chosen_text(chosen: Reference) -> str:
    return f"{pct(chosen.accuracy)} ({chosen.chosen_by}, round {chosen.round})"


def accuracy_per_round(runs: list[RunFolder]) -> str:
    curves = [(run.label(mode), records) for run in runs for mode, records in run.modes.items()]
    return per_round_table(curves, "test_accuracy", pct, "run / mode \\ round")


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
             "one epoch. Final: the last evaluated round (federation.eval_every evaluates only every "
             "so many rounds, and always the last)."
             + (LOCAL if any("local" in run.modes for run in runs) else ""),
             results_table(runs)]
    gaps = gap_table(runs)
    if gaps is not None:
        parts += ["## Federated vs centralized",
                  "Federated minus centralized test accuracy in percentage points (negative: federated "
                  "is behind), at the last round and best round against best round.", gaps]
    converged = convergence_table(runs)
    if converged is not None:
        parts += ["## Convergence", EXPLAINED, converged]
    parts += ["## Test accuracy per round", accuracy_per_round(runs), "## Figures",
              *(f"![{caption}]({name})" for name, caption in figures.items())]
    return "\n\n".join(parts) + "\n"


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Read the run folders, then write the figures and report.md into `out` (default: the run
    folder when there is one, ./report when there are several). Returns report.md's path."""

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
        text, images = generation[0], {name: png for name, (_, png) in generation[1].items()}
    else:
        images = {name: plot(curves) for name, (_, plot) in FIGURES.items()}
        text = markdown_report(runs, {name: caption for name, (caption, _) in FIGURES.items()})
    out.mkdir(parents=True, exist_ok=True)
    for name, png in images.items():
        atomic_write(out / name, png)
    report = out / "report.md"
    atomic_write(report, text)
    if len(runs) == 1:  # a run tracked in MLflow gets its report and figures as artifacts
        log_report(runs[0].path, [out / name for name in images] + [report])
    return report
