"""The generation part of reports: when a study's runs train a causal LM (records carry
test_perplexity), its report leads with perplexity, ROUGE-L and exact match against round 0
(before training), per round, a figure of each, and generated examples side by side (the model
at round 0, the federated and the centralized one on the same test articles).
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.axes import Axes

from fedcustom.core.text import fmt_bytes, table
from fedcustom.reporting.cells import CellResult, per_client, trainable_parameters
from fedcustom.reporting.plots import Curve, integer_rounds, points, render
from fedcustom.reporting.runs import last_value, per_round_table


def is_generation(cells: list[Any]) -> bool:
    return any("test_perplexity" in r.modes[m][0] for c in cells for r in c.fed + c.cen for m in r.modes)


def value(records: list[dict[str, Any]] | None, key: str, round_: int = -1) -> float:
    """`key` at `round_`, or (round_ < 0) in the last record that has it: with eval_every, the
    last record of a run still going may not be an evaluated one."""
    if not records:
        return math.nan
    if round_ < 0:
        return last_value(records, key)
    v = next((r for r in records if r["round"] == round_), {}).get(key)
    return float(v) if isinstance(v, int | float) else math.nan


def num(v: float, spec: str = ".2f") -> str:
    return "n/a" if math.isnan(v) else format(v, spec)


def mode_records(runs: list[Any], mode: str) -> list[dict[str, Any]] | None:
    return next((r.modes[mode] for r in runs if mode in r.modes), None)


def results_table(axes: list[str], cells: list[Any]) -> str:

    rows = []
    for c in cells:
        fed, cen = mode_records(c.fed, "federated"), mode_records(c.cen, "centralized")
        start = fed or cen
        params = next((p for r in c.fed + c.cen for m in r.modes if (p := trainable_parameters(r, m))), None)
        rows.append([
            *(c.labels[a] for a in axes),
            num(value(start, "test_perplexity", 0)), num(value(fed, "test_perplexity")),
            num(value(cen, "test_perplexity")),
            num(100 * value(start, "test_rougeL", 0), ".1f"), num(100 * value(fed, "test_rougeL"), ".1f"),
            num(100 * value(cen, "test_rougeL"), ".1f"),
            num(100 * value(fed, "test_exact_match"), ".0f"),
            num(100 * value(cen, "test_exact_match"), ".0f"),
            "n/a" if params is None else f"{params:,}",
            fmt_bytes(per_client(fed)) if fed else "n/a",
        ])
    return table([*axes, "round-0 ppl", "federated ppl", "centralized ppl", "round-0 ROUGE-L",
                  "federated ROUGE-L", "centralized ROUGE-L", "fed EM %", "cen EM %",
                  "trainable params", "up / client / round"], rows, markdown=True)


def metric_per_round(curves: list[Curve], key: str, scale: float, spec: str) -> str:
    return per_round_table([(c.label, c.records) for c in curves], key, lambda v: num(scale * v, spec))


def examples_table(cells: list[Any], axes: list[str], limit: int = 4) -> str:
    """One row per shown test example and cell: the reference and each model's generation."""
    def short(text: str, n: int = 90) -> str:
        text = " ".join(str(text).split()).replace("|", "/")
        return text if len(text) <= n else text[: n - 1] + "…"

    rows = []
    for c in cells:
        fed, cen = mode_records(c.fed, "federated"), mode_records(c.cen, "centralized")
        start = (fed or cen or [{}])[0].get("test_examples", [])
        finals = [next((r["test_examples"] for r in reversed(recs) if "test_examples" in r), [])
                  if recs else [] for recs in (fed, cen)]  # the last evaluated round's
        for i, ex in enumerate(start[:limit]):
            tuned = [short(f[i]["generated"]) if i < len(f) else "n/a" for f in finals]
            rows.append([", ".join(c.labels[a] for a in axes), short(ex["prompt"].split("\n")[-1], 70),
                         short(ex["reference"]), short(ex["generated"]), *tuned])
    return table(["cell", "article (start)", "reference headline", "round 0", "federated", "centralized"],
                 rows, markdown=True)


def metric_png(curves: list[Curve], key: str, title: str, ylabel: str, scale: float = 1.0) -> bytes:
    def draw(ax: Axes, curve: Curve, style: dict[str, Any]) -> None:
        x, y = points(curve.records, key)
        ax.plot(x, [scale * v for v in y], **style)

    return render(title, "round (centralized: epoch)", ylabel, curves, draw, integer_rounds)


def generation_parts(axes: list[str], cells: list[Any], curves: list[Curve]) -> tuple[list[str], dict]:
    """The report's Markdown parts and its figures {file: (caption, png)}."""
    figures = {
        "perplexity.png": ("Test perplexity over the response tokens per round (round 0: before training)",
                           metric_png(curves, "test_perplexity", "Test perplexity per round", "perplexity")),
        "rougeL.png": ("ROUGE-L F1 (%) of greedy generations per round (round 0: before training)",
                       metric_png(curves, "test_rougeL", "ROUGE-L per round", "ROUGE-L F1 (%)", 100)),
    }
    parts = [
        "## Results per cell",
        "Perplexity: exp of the mean cross-entropy over the test responses' tokens (the end token "
        "included), all test examples. ROUGE-L (F1, %, rouge-score with stemming) and exact match "
        "(after lowercasing and dropping punctuation): greedy generations for the first "
        "generation.eval_examples test examples. Round 0: before any training, the same start for "
        "both modes (a method that starts as the identity, like LoRA, is the untuned model there; "
        "an initialized prefix or soft prompt already shifts it a little). Federated: the last "
        "round; centralized: the last epoch (one client with all training data, the same rounds x "
        "local epochs).",
        results_table(axes, cells),
        "## Test perplexity per round", metric_per_round(curves, "test_perplexity", 1.0, ".2f"),
        "## ROUGE-L per round", metric_per_round(curves, "test_rougeL", 100.0, ".1f"),
        "## Generated examples",
        "The first test examples of every run's records: the model at round 0 (before training) "
        "and the final federated and centralized models on the same articles.",
        examples_table(cells, axes),
    ]
    return parts, figures


def generation_report(runs: list[Any], curves: list[Curve], head: list[str]) -> tuple[str, dict] | None:
    """`fedcustom report RUN_DIR...` of generation runs: each run is one cell (its modes side by
    side). None when the runs are classification runs."""

    cells = [CellResult({"run": r.name}, [r.config.get("seed", 0)], [r], [r]) for r in runs]
    if not is_generation(cells):
        return None
    parts, figures = generation_parts(["run"], cells, curves)
    parts += ["## Figures", *(f"![{caption}]({name})" for name, (caption, _) in figures.items())]
    return "\n\n".join([*head, *parts]) + "\n", figures
