"""The side-by-side summary printed (and saved as summary.txt) after a run."""

from __future__ import annotations

from typing import Any

from fedcustom.core.text import fmt_bytes, table


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
