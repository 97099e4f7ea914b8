"""The side-by-side summary printed (and saved as summary.txt) after a run."""

from __future__ import annotations

import math
from typing import Any

from fedcustom.core.text import fmt_bytes, table


def headline_metric(kind: str) -> str:
    """The metric a run's summary leads with: accuracy, or a generation task's perplexity."""
    return "test_perplexity" if kind == "generation" else "test_accuracy"


def last_with(records: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The last record that has `key`: with federation.eval_every, rounds between evaluations
    have no test_* keys ({} when no record has it)."""
    return next((r for r in reversed(records) if isinstance(r.get(key), int | float)), {})


def side_by_side(results: dict[str, list[dict[str, Any]]], metric: str = "test_accuracy") -> str:
    """Per-round metric of each mode in columns (a round no mode evaluated has no row; a mode
    that did not evaluate a round leaves it blank), then totals per mode. A local run's total
    also shows its worst and best client."""
    modes = list(results)
    by_round = {m: {r["round"]: r[metric] for r in results[m] if isinstance(r.get(metric), int | float)}
                for m in modes}
    rounds = sorted({n for values in by_round.values() for n in values})
    rows = [[str(n)] + [f"{by_round[m][n]:.4f}" if n in by_round[m] else "" for m in modes]
            for n in rounds]
    per_round = table(["round", *[f"{m} {metric}" for m in modes]], rows)
    totals = []
    for m in modes:
        trained = [r for r in results[m] if r["round"] > 0]
        last = last_with(results[m], metric)
        final = f"{last.get(metric, math.nan):.4f}"
        if f"{metric}_min" in last and f"{metric}_max" in last:
            final += f" ({last[f'{metric}_min']:.4f}..{last[f'{metric}_max']:.4f})"
        totals.append([
            m, final, f"{last_with(results[m], 'test_macro_f1').get('test_macro_f1', math.nan):.4f}",
            fmt_bytes(sum(r.get("bytes_down", 0) + r.get("bytes_up", 0) for r in trained)),
            f"{sum(r.get('client_seconds', 0) for r in trained):.0f}",
            f"{sum(r.get('round_seconds', 0) for r in trained):.0f}",
            f"{max((r['peak_rss_mb'] for r in trained if 'peak_rss_mb' in r), default=math.nan):.0f}",
        ])
    summary = table(["mode", metric, "macro_f1", "bytes sent", "client s", "wall s", "peak MB"],
                    totals)
    return per_round + "\n\n" + summary
