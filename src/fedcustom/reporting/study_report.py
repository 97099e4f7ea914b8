"""The report of a study folder (written by `fedcustom study`): one row per cell, the gap of each
federated run to its centralized baseline, the cost of each method (trainable parameters, bytes,
client seconds, memory), and figures: accuracy per round, the accuracy-communication frontier,
the gap per cell, and final accuracy against every numeric axis (Dirichlet alpha, client count).
With several seeds, every number is the mean over seeds with its spread (min to max).
"""

from __future__ import annotations

import json
from pathlib import Path

from fedcustom.core.io import atomic_write
from fedcustom.core.text import fmt_bytes, pct, table
from fedcustom.reporting.cells import (
    CellResult,
    curves,
    finals,
    gaps,
    load_study_results,
    per_client,
    spread,
    trainable_parameters,
)
from fedcustom.reporting.generation import generation_parts, is_generation
from fedcustom.reporting.runs import summarize
from fedcustom.reporting.study_plots import study_figures


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


def per_round_table(cells: list[CellResult]) -> str:
    by_round = [(c.label, {r["round"]: r for r in c.records}) for c in curves(cells)]
    rounds = sorted({n for _, b in by_round for n in b})
    rows = [[label, *(pct(b[n].get("test_accuracy")) if n in b else "" for n in rounds)]
            for label, b in by_round]
    return table(["run \\ round", *map(str, rounds)], rows, markdown=True)


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
