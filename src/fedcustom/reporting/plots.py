"""PNG figures of per-round records: accuracy, the accuracy-communication frontier, train loss.

Figures are built with matplotlib's object API (Figure + Agg canvas, never pyplot), so nothing
needs a screen and no global plotting state is touched. Each function returns PNG bytes; the
caller writes them atomically. Every curve gets its own colour; the mode sets the line style
(federated solid with circles, centralized dashed with squares, local dotted with triangles), so
a figure still reads in grayscale. A curve is drawn through the rounds that have its metric
(with federation.eval_every, the rounds in between have none).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from fedcustom.reporting.convergence import cumulative_bytes
from fedcustom.reporting.runs import evaluated

DPI = 150
SIZE = (6.4, 4.2)  # inches: a one-column figure that still reads when scaled into a paper
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "lines.linewidth": 1.6, "lines.markersize": 4.5,
}
MODE_STYLE = {"federated": {"linestyle": "-", "marker": "o"},
              "centralized": {"linestyle": "--", "marker": "s"},
              "local": {"linestyle": ":", "marker": "^"}}
# Modes that send no state over a network: centralized (its one "client" is the server) and local
# (each client keeps its own model). On the accuracy-communication figure they are reference
# levels, not curves.
UNSENT = ("centralized", "local")
LEGEND_INSIDE = 3  # curves whose legend fits inside the axes
BYTE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1.0, "bytes"))


@dataclass
class Curve:
    label: str
    mode: str
    records: list[dict[str, Any]]


def points(records: list[dict[str, Any]], y: str,
           x: Callable[[dict[str, Any]], float] = lambda r: r["round"]) -> tuple[list[float], list[float]]:
    """(x, y) of the records that carry `y` (round 0 has no train loss, for example)."""
    rows = [r for r in records if isinstance(r.get(y), int | float)]
    return [x(r) for r in rows], [r[y] for r in rows]


def render(title: str, xlabel: str, ylabel: str, curves: list[Curve],
           draw: Callable[[Axes, Curve, dict[str, Any]], None],
           setup: Callable[[Axes], None] | None = None) -> bytes:
    # A few curves share the axes with their legend; more get a legend below the axes, and the
    # figure grows by its rows so the plot itself keeps its size and no curve is hidden.
    below = len(curves) > LEGEND_INSIDE
    columns = 2 if below and max(len(c.label) for c in curves) <= 40 else 1
    rows = math.ceil(len(curves) / columns) if below else 0
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(SIZE[0], SIZE[1] + 0.2 * rows), dpi=DPI)
        ax = fig.add_subplot()
        colours = matplotlib.colormaps["tab10"].colors
        for i, curve in enumerate(curves):
            style = {"color": colours[i % len(colours)], "label": curve.label,
                     **MODE_STYLE.get(curve.mode, {"linestyle": "-.", "marker": "D"})}
            draw(ax, curve, style)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.35, linewidth=0.6)
        if setup is not None:
            setup(ax)
        if below:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=columns, frameon=False)
        else:
            ax.legend(loc="best", frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def integer_rounds(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def accuracy_png(curves: list[Curve]) -> bytes:
    """Test accuracy (%) per round, round 0 (the untrained start) included."""

    def draw(ax: Axes, curve: Curve, style: dict[str, Any]) -> None:
        x, y = points(curve.records, "test_accuracy")
        ax.plot(x, [100 * v for v in y], **style)

    return render("Test accuracy per round", "round (centralized: epoch)", "test accuracy (%)",
                  curves, draw, integer_rounds)


def accuracy_vs_bytes_png(curves: list[Curve]) -> bytes:
    """Test accuracy against cumulative bytes sent (down + up), log x: the accuracy-communication
    frontier. Round 0 has sent nothing, so it has no place on a log axis and is left out. The
    centralized and local modes exchange nothing over a network, so their final accuracy is
    drawn as a horizontal reference line instead of a curve."""
    totals = {id(c): cumulative_bytes(c.records) for c in curves if c.mode not in UNSENT}
    top = max((b for t in totals.values() for b in t.values()), default=1.0)
    scale, unit = next((s, u) for s, u in BYTE_UNITS if top >= s or s == 1.0)

    def draw(ax: Axes, curve: Curve, style: dict[str, Any]) -> None:
        if curve.mode in UNSENT:  # it sends no state over a network: a reference level
            final = [r["test_accuracy"] for r in evaluated(curve.records)][-1:]
            for accuracy in final:
                ax.axhline(100 * accuracy, color=style["color"], linestyle=style["linestyle"],
                           linewidth=1.2, label=f"{curve.label}, final")
            return
        sent = totals[id(curve)]
        x, y = points([r for r in curve.records if sent.get(r["round"], 0) > 0], "test_accuracy",
                      lambda r: sent[r["round"]] / scale)
        ax.plot(x, [100 * v for v in y], **style)

    sent = [b / scale for t in totals.values() for b in t.values() if b > 0]
    decades = math.log10(max(sent) / min(sent)) if sent else 0.0

    def setup(ax: Axes) -> None:
        ax.set_xscale("log")
        # enough ticks to read a short range, labelled as plain numbers ("20", not 2x10^1)
        if decades < 0.5:  # within one decade: evenly spaced round numbers
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        else:
            subs = (1.0,) if decades >= 2 else (1.0, 2.0, 5.0) if decades >= 1 else tuple(range(1, 10))
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        low, high = ax.get_ylim()  # headroom: a reference line at the top stays clear of the edge
        ax.set_ylim(low, high + 0.05 * (high - low))

    return render("Accuracy vs communication", f"cumulative {unit} sent, down + up (log scale)",
                  "test accuracy (%)", curves, draw, setup)


def loss_png(curves: list[Curve]) -> bytes:
    """Train loss per round: each client's mean over its local steps, weighted by its examples
    (round 0 trains nothing and has none)."""

    def draw(ax: Axes, curve: Curve, style: dict[str, Any]) -> None:
        ax.plot(*points(curve.records, "train_loss"), **style)

    return render("Train loss per round", "round (centralized: epoch)", "train loss (mean over local steps)",
                  curves, draw, integer_rounds)


FIGURES: dict[str, tuple[str, Callable[[list[Curve]], bytes]]] = {
    "accuracy.png": ("Test accuracy per round (round 0: the untrained start)", accuracy_png),
    "accuracy_vs_bytes.png": ("Test accuracy against cumulative bytes sent, down + up (log scale): "
                              "the accuracy-communication frontier (rounds 1 on; horizontal lines: "
                              "the final accuracy of the centralized baseline and of local training, "
                              "which send nothing)", accuracy_vs_bytes_png),
    "loss.png": ("Train loss per round", loss_png),
}
