"""The report of a study folder (written by `fedcustom study`): one row per cell, the gap of each
federated run to its centralized baseline (and local training's accuracy when the study runs it),
the cost of each method (trainable parameters, bytes, client seconds, memory), how fast each
federated run gets close to its centralized reference (convergence.py), and figures: accuracy
per round, the accuracy-communication frontier, the gap per cell, and final accuracy against
every numeric axis (Dirichlet alpha, client count).
With several seeds, every number is the mean over seeds with its spread (min to max).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fedcustom.core.io import atomic_write
from fedcustom.core.text import fmt_bytes, pct, table
from fedcustom.reporting.cells import (
    CellResult,
    curves,
    finals,
    gaps,
    load_study_results,
    local_finals,
    pairs,
    per_client,
    spread,
    trainable_parameters,
)
from fedcustom.reporting.convergence import EXPLAINED, FRACTIONS, Reached, convergence, fraction_label
from fedcustom.reporting.generation import generation_parts, is_generation
from fedcustom.reporting.runs import MODE_ORDER, per_round_table, summarize
from fedcustom.reporting.study_plots import study_figures


def cells_table(axes: list[str], cells: list[CellResult]) -> str:
    local = any(r.modes.get("local") for c in cells for r in c.local)  # a column only when run
    rows = []
    for c in cells:
        fed_records = [r.modes["federated"] for r in c.fed if "federated" in r.modes]
        params = next((p for r in c.fed + c.cen for m in r.modes if (p := trainable_parameters(r, m))), None)
        rows.append([
            *(c.labels[a] for a in axes),
            spread(finals(c.fed, "federated")), spread(finals(c.cen, "centralized")),
            *([local_finals(c.local)] if local else []),
            spread(gaps(c), lambda v: f"{100 * v:+.2f}"),
            "n/a" if params is None else f"{params:,}",
            spread([per_client(r) for r in fed_records], fmt_bytes),
            spread([per_client(r, "forward_passes") for r in fed_records], lambda v: f"{v:,.0f}"),
            spread([per_client(r, "backward_passes") for r in fed_records], lambda v: f"{v:,.0f}"),
            spread([summarize(r).bytes_total for r in fed_records], fmt_bytes),
            spread([summarize(r).client_seconds_per_round for r in fed_records], lambda v: f"{v:.0f}"),
            spread([summarize(r).peak_rss_mb for r in fed_records], lambda v: f"{v:.0f}"),
        ])
    return table([*axes, "federated final", "centralized final", *(["local final"] if local else []),
                  "gap (points)", "trainable params", "up / client / round", "forward / client / round",
                  "backward / client / round", "bytes sent (all rounds)", "client s / round", "peak RSS MB"],
                 rows, markdown=True)


def over_seeds(reached: list[Reached | None], get: Callable[[Reached], float],
               show: Callable[[float], str]) -> str:
    """Mean (min..max) over the seeds that reached a target, and how many did if not all."""
    hit = [get(r) for r in reached if r is not None]
    if not hit:
        return "not reached"
    return spread(hit, show) + ("" if len(hit) == len(reached) else f", {len(hit)}/{len(reached)} seeds")


def convergence_table(axes: list[str], cells: list[CellResult]) -> str | None:
    """Each cell's federated runs against the centralized baseline of their own seed."""
    rows = []
    for c in cells:
        results = [r for fed, cen in pairs(c) if (r := convergence(fed, cen)) is not None]
        if not results:
            continue
        plateaus = [r.plateau for r in results if r.plateau is not None]
        rows.append([
            *(c.labels[a] for a in axes), spread([r.reference.accuracy for r in results]),
            *(cell for f in FRACTIONS for cell in (
                over_seeds([r.reached[f] for r in results], lambda x: x.round, rounds),
                over_seeds([r.reached[f] for r in results], lambda x: x.bytes, fmt_bytes))),
            f"{sum(p.flat for p in plateaus)}/{len(plateaus)}" if plateaus else "n/a",
            spread([p.spread for p in plateaus], lambda v: f"{100 * v:.2f}"),
            spread([r.selected.accuracy for r in results]),
            spread([r.selected.accuracy / r.reference.accuracy for r in results]),
        ])
    if not rows:
        return None
    return table([*axes, "centralized reference",
                  *(f"{fraction_label(f)}: {what}" for f in FRACTIONS for what in ("round", "bytes")),
                  "plateaued (seeds)", "plateau spread (points)", "federated, selected",
                  "selected / reference"], rows, markdown=True)


def rounds(v: float) -> str:
    return f"{v:.1f}".removesuffix(".0")  # a mean over seeds may fall between rounds


def accuracy_per_round(cells: list[CellResult], key: str = "test_accuracy") -> str:
    return per_round_table([(c.label, c.records) for c in curves(cells)], key, pct)


def has_validation(cells: list[CellResult]) -> bool:
    return any("val_accuracy" in r for c in curves(cells) for r in c.records)


def write_study_report(study_dir: Path, out: Path | None = None) -> Path:

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
    finished = len({id(r) for c in cells for mode in MODE_ORDER for r in c.runs(mode)})
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
            "not counted; client seconds are summed over a round's clients. Final: the last evaluated "
            "round (federation.eval_every evaluates only every so many rounds, and always the last)."
            + (" Local: every client trains alone on its own data; the mean over the clients' own "
               "models (over seeds too), with the worst and the best client of any seed in brackets."
               if any(c.local for c in cells) else "")
            + (" Several seeds: mean (min..max)." if len(index["seeds"]) > 1 else ""),
            cells_table(axes, cells)]
        converged = convergence_table(axes, cells)
        if converged is not None:
            parts += ["## Convergence", EXPLAINED + (" Several seeds: mean (min..max) over the seeds, "
                                                     "each against the baseline of its own seed."
                                                     if len(index["seeds"]) > 1 else ""), converged]
        parts += ["## Test accuracy per round", accuracy_per_round(cells)]
        if has_validation(cells):  # what hyperparameters are chosen on (data.validation_fraction)
            parts += ["## Validation accuracy per round",
                      "On the validation split, held out of every client's data and of the test set: "
                      "choose settings on this table, never on the test columns.",
                      accuracy_per_round(cells, "val_accuracy")]
    parts += ["## Figures", *(f"![{caption}]({name})" for name, (caption, _) in figures.items())]
    out.mkdir(parents=True, exist_ok=True)
    for name, (_, png) in figures.items():
        atomic_write(out / name, png)
    report = out / "report.md"
    atomic_write(report, "\n\n".join(p for p in parts if p) + "\n")
    return report
