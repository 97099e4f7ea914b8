"""Plain-text tables of run results (the side-by-side summary printed after a run)."""

from __future__ import annotations

from typing import Any


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths, strict=False))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


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
