"""Figures of a study: accuracy per round and the accuracy-communication frontier of every run
(plots.py draws them), the federated-centralized gap per cell, and final federated accuracy
against each numeric axis of the grid (e.g. Dirichlet alpha, client count), with the centralized
baseline as a reference line. Several seeds: the mean, with min..max as error bars."""

from __future__ import annotations

import io
import math
import statistics
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from fedcustom.reporting.cells import CellResult, curves, finals, gaps
from fedcustom.reporting.plots import DPI, SIZE, STYLE, accuracy_png, accuracy_vs_bytes_png

Figures = dict[str, tuple[str, bytes]]


def png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def mean_and_error(values: list[float]) -> tuple[float, tuple[float, float]]:
    mean = statistics.fmean(values)
    return mean, (mean - min(values), max(values) - mean)


def gap_png(cells: list[CellResult]) -> bytes | None:
    rows = [(c.name(), [100 * g for g in gaps(c)]) for c in cells]
    rows = [(name, g) for name, g in rows if g]
    if not rows:
        return None
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(SIZE[0], max(2.0, 0.9 + 0.3 * len(rows))), dpi=DPI)
        ax = fig.add_subplot()
        means = [mean_and_error(g) for _, g in rows]
        y = list(range(len(rows)))
        ax.barh(y, [m for m, _ in means], xerr=list(zip(*(e for _, e in means), strict=True)),
                color=["tab:red" if m < 0 else "tab:green" for m, _ in means], alpha=0.8, capsize=3)
        ax.set_yticks(y, [name for name, _ in rows])
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("federated minus centralized final test accuracy (points)")
        ax.set_title("Gap to centralized training")
        ax.grid(True, axis="x", alpha=0.35, linewidth=0.6)
        return png(fig)


def numeric(labels: list[str]) -> list[float] | None:
    try:
        values = [float(v) for v in labels]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) and len(values) > 1 else None


def axis_png(axis: str, values: list[float], cells: list[CellResult], others: list[str]) -> bytes:
    """Final federated accuracy against one numeric axis; one line per choice of the other axes."""
    lines: dict[str, list[tuple[float, list[float]]]] = {}
    references: dict[str, list[float]] = {}
    for c in cells:
        rest = ", ".join(f"{o.split('.')[-1]}={c.labels[o]}" for o in others) or "federated"
        accs = [100 * a for a in finals(c.fed, "federated")]
        if accs:
            lines.setdefault(rest, []).append((float(c.labels[axis]), accs))
        references.setdefault(rest, []).extend(100 * a for a in finals(c.cen, "centralized"))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=SIZE, dpi=DPI)
        ax = fig.add_subplot()
        colours = matplotlib.colormaps["tab10"].colors
        for i, (name, pts) in enumerate(sorted(lines.items())):
            pts.sort()
            stats = [mean_and_error(a) for _, a in pts]
            ax.errorbar([x for x, _ in pts], [m for m, _ in stats],
                        yerr=list(zip(*(e for _, e in stats), strict=True)), marker="o", capsize=3,
                        color=colours[i % len(colours)], label=name)
            if references.get(name):
                ax.axhline(statistics.fmean(references[name]), color=colours[i % len(colours)],
                           linestyle="--", linewidth=1.2, label=f"{name}: centralized")
        positive = min(values) > 0
        if positive and max(values) / min(values) >= 20:
            ax.set_xscale("log")
        ax.set_xticks(sorted(values), [f"{v:g}" for v in sorted(values)])
        ax.set_xlabel(axis)
        ax.set_ylabel("final test accuracy (%)")
        ax.set_title(f"Federated accuracy vs {axis.split('.')[-1]}")
        ax.grid(True, alpha=0.35, linewidth=0.6)
        ax.legend(loc="best", frameon=False)
        return png(fig)


def study_figures(index: dict[str, Any], cells: list[CellResult]) -> Figures:
    all_curves = curves(cells)
    local = any(c.mode == "local" for c in all_curves)
    figures: Figures = {
        "accuracy.png": ("Test accuracy per round of every run (fed: federated, cen: centralized"
                         + (", loc: local" if local else "") + ")", accuracy_png(all_curves)),
        "accuracy_vs_bytes.png": ("Test accuracy against cumulative bytes sent (log scale): the "
                                  "accuracy-communication frontier; horizontal lines: centralized "
                                  + ("and local finals (they send nothing)" if local else "finals"),
                                  accuracy_vs_bytes_png(all_curves)),
    }
    gap = gap_png(cells)
    if gap is not None:
        figures["gap.png"] = ("Federated minus centralized final test accuracy per cell", gap)
    names = [a["name"] for a in index["axes"]]
    for a in index["axes"]:
        values = numeric(a["labels"])
        if values is not None:
            others = [n for n in names if n != a["name"]]
            figures[f"accuracy_vs_{a['name'].split('.')[-1]}.png"] = (
                f"Final federated test accuracy against {a['name']} (dashed: centralized)",
                axis_png(a["name"], values, cells, others))
    return figures
