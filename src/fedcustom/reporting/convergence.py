"""Convergence of a federated run, read from its records: when it gets close to its centralized
reference, how many bytes that took, whether its curve has flattened, and what it scores when its
round is chosen the way the reference's epoch is.

The reference is the centralized run's test accuracy at the round of its best validation
accuracy (the earliest such round) when its records have validation accuracy, else its final
test accuracy: picking the best *test* round would select on the test set. The same choice made
over the federated run's evaluated rounds gives its "selected" accuracy: the symmetric comparison
(a server that keeps the round its validation set likes best), beside the final round's. Only evaluated rounds
count: with `federation.eval_every`, the records of rounds in between carry no test_*/val_* keys
(round 0 and the last round are always evaluated). Pure functions over record lists, so tests can
check them against numbers computed by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedcustom.reporting.runs import Record, evaluated, has

FRACTIONS = (0.95, 0.99)  # of the reference accuracy
TAIL = 10  # the plateau is judged over the last 1/TAIL of the rounds
PLATEAU = 0.01  # max - min test accuracy below this (one point) over the tail: a plateau
# A target is a fraction times a float: an accuracy equal to it on paper (0.99 x 0.80 = 0.792)
# may come out one rounding step below the product, and must still count as reaching it.
SLACK = 1e-9


@dataclass(frozen=True)
class Reference:
    accuracy: float
    round: int
    chosen_by: str  # "best validation" or "final"


@dataclass(frozen=True)
class Reached:
    round: int  # the first evaluated round at or above the target
    bytes: float  # bytes_up + bytes_down summed over rounds 1..round


@dataclass(frozen=True)
class Plateau:
    flat: bool  # spread < PLATEAU
    spread: float  # max - min test accuracy over the rounds judged
    first_round: int
    last_round: int


@dataclass(frozen=True)
class Convergence:
    reference: Reference
    selected: Reference  # the federated run's test accuracy, its round chosen like the reference's
    reached: dict[float, Reached | None]  # fraction of the reference -> first reached (None: not)
    plateau: Plateau | None  # None: fewer than two evaluated rounds


def reference(records: list[Record]) -> Reference | None:
    """The test accuracy at the earliest round of best validation accuracy, else the final one
    (see the module's docstring); None without any test accuracy."""
    validated = [r for r in evaluated(records, "val_accuracy") if has(r, "test_accuracy")]
    if validated:
        best = max(validated, key=lambda r: (r["val_accuracy"], -r["round"]))  # earliest best
        return Reference(best["test_accuracy"], best["round"], "best validation")
    tested = evaluated(records)
    return Reference(tested[-1]["test_accuracy"], tested[-1]["round"], "final") if tested else None


def cumulative_bytes(records: list[Record]) -> dict[int, float]:
    """Round -> bytes sent down and up in rounds 1..round (round 0 trains and sends nothing)."""
    total, out = 0.0, {}
    for r in sorted(records, key=lambda r: r["round"]):
        if r["round"] > 0:
            total += r.get("bytes_down", 0) + r.get("bytes_up", 0)
        out[r["round"]] = total
    return out


def first_reaching(records: list[Record], target: float, key: str = "test_accuracy") -> Reached | None:
    """The first evaluated round whose `key` is at least `target`, and the bytes sent up to it."""
    sent = cumulative_bytes(records)
    for r in evaluated(records, key):
        if r[key] >= target - SLACK:
            return Reached(r["round"], sent[r["round"]])
    return None


def plateau(records: list[Record], key: str = "test_accuracy") -> Plateau | None:
    """Whether the curve is flat at its end: over the evaluated rounds in the last tenth of the
    rounds (at least the last two evaluated rounds, so a short run or a sparse evaluation still
    compares two points), max - min of `key` below one point. None with under two evaluations."""
    tested = evaluated(records, key)
    if len(tested) < 2:
        return None
    last = max(r["round"] for r in records)
    tail = [r for r in tested if r["round"] > last - math.ceil(last / TAIL)]
    window = tail if len(tail) >= 2 else tested[-2:]
    values = [r[key] for r in window]
    spread = max(values) - min(values)
    return Plateau(spread < PLATEAU, spread, window[0]["round"], window[-1]["round"])


def convergence(federated: list[Record], centralized: list[Record],
                fractions: tuple[float, ...] = FRACTIONS) -> Convergence | None:
    """A federated run's convergence against its centralized reference (None: either side has
    no test accuracy yet)."""
    ref, selected = reference(centralized), reference(federated)
    if ref is None or selected is None:
        return None
    return Convergence(ref, selected, {f: first_reaching(federated, f * ref.accuracy) for f in fractions},
                       plateau(federated))


def fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


EXPLAINED = (
    "The centralized reference is the centralized test accuracy at its best validation round "
    "(the earliest, if tied) when the records have validation accuracy, else its final test "
    f"accuracy. For {' and '.join(fraction_label(f) for f in FRACTIONS)} of it: the first "
    "evaluated round at which the federated test accuracy reaches it, and the bytes sent down and "
    "up in rounds 1 to that round. Plateau: max - min of the federated test accuracy over the "
    f"evaluated rounds in the last {100 // TAIL}% of the rounds (at least the last two evaluated), "
    f"in points; a plateau when below {100 * PLATEAU:g}. Selected: the federated test accuracy "
    "at the federated run's own best validation round (else its final), the choice the reference "
    "gets; beside it, its share of the reference.")
