"""Plain-text and Markdown formatting shared by partition tables, run summaries and reports."""

from __future__ import annotations

import math
import re

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


def pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def points(value: float) -> str:
    """A difference of two accuracies, in percentage points, signed."""
    return f"{100 * value:+.2f}"
