"""Convergence against the centralized reference, on record lists written by hand."""

from __future__ import annotations

from typing import Any

from fedcustom.reporting.convergence import (
    Plateau,
    Reached,
    Reference,
    convergence,
    cumulative_bytes,
    first_reaching,
    plateau,
    reference,
)


def curve(accuracies: dict[int, float | None], up: int = 60, down: int = 40) -> list[dict[str, Any]]:
    """Rounds 0..max; None: a round that was not evaluated (no test_* key, as with eval_every).
    Rounds 1 on send `down` + `up` bytes; round 0 sends nothing."""
    out = []
    for n in range(max(accuracies) + 1):
        record: dict[str, Any] = {"round": n}
        if n > 0:
            record |= {"bytes_up": up, "bytes_down": down}
        if accuracies.get(n) is not None:
            record["test_accuracy"] = accuracies[n]
        out.append(record)
    return out


# round 0 at 0.40, then 0.5, 0.7, 0.76, 0.79, 0.795; 100 bytes a round (60 up + 40 down)
FED = curve({0: 0.40, 1: 0.5, 2: 0.7, 3: 0.76, 4: 0.79, 5: 0.795})
CEN = [{"round": 0, "test_accuracy": 0.40}, {"round": 1, "test_accuracy": 0.70},
       {"round": 2, "test_accuracy": 0.80}]  # no validation split: the reference is the final 0.80


def test_reference_is_the_final_test_accuracy_without_validation() -> None:
    assert reference(CEN) == Reference(0.80, 2, "final")
    # a last round that was not evaluated: the last record that has the metric
    assert reference([*CEN, {"round": 3, "bytes_up": 5}]) == Reference(0.80, 2, "final")
    assert reference([{"round": 0}]) is None


def test_reference_is_the_test_accuracy_at_the_earliest_best_validation_round() -> None:
    records = [
        {"round": 0, "val_accuracy": 0.50, "test_accuracy": 0.50},
        {"round": 1, "val_accuracy": 0.70, "test_accuracy": 0.72},
        {"round": 2, "val_accuracy": 0.80, "test_accuracy": 0.78},  # best validation, first
        {"round": 3, "val_accuracy": 0.80, "test_accuracy": 0.81},  # tied, later
        {"round": 4},  # not evaluated
        {"round": 5, "val_accuracy": 0.75, "test_accuracy": 0.83},  # best test: not chosen
    ]
    assert reference(records) == Reference(0.78, 2, "best validation")


def test_95_and_99_percent_of_the_reference() -> None:
    # 95% of 0.80 = 0.76: round 3 has exactly 0.76, after 3 x 100 bytes;
    # 99% of 0.80 = 0.792: round 4 (0.79) is short of it, round 5 (0.795) reaches it at 500 bytes
    result = convergence(FED, CEN)
    assert result is not None
    assert result.reference == Reference(0.80, 2, "final")
    assert result.selected == Reference(0.795, 5, "final")  # no validation: the federated final
    assert result.reached == {0.95: Reached(3, 300.0), 0.99: Reached(5, 500.0)}
    # 5 rounds: the last tenth is round 5 alone, so the last two evaluated rounds, 4 and 5:
    # 0.795 - 0.79 = 0.005 < 0.01
    assert result.plateau is not None
    assert result.plateau.flat and (result.plateau.first_round, result.plateau.last_round) == (4, 5)
    assert abs(result.plateau.spread - 0.005) < 1e-12


def test_not_reached() -> None:
    # reference 0.90: 95% is 0.855, 99% 0.891; the federated curve tops out at 0.795
    result = convergence(FED, [{"round": 0, "test_accuracy": 0.5}, {"round": 1, "test_accuracy": 0.9}])
    assert result is not None and result.reached == {0.95: None, 0.99: None}
    assert convergence(FED, [{"round": 0}]) is None  # no centralized accuracy yet: nothing to compare


def test_rounds_without_metrics_are_skipped_but_their_bytes_count() -> None:
    # evaluated every 3 rounds (and the last): rounds 0, 3, 6, 9, 10; 10 bytes a round
    fed = curve({0: 0.3, 3: 0.6, 6: 0.78, 9: 0.80, 10: 0.805}, up=6, down=4)
    assert cumulative_bytes(fed)[6] == 60.0 and cumulative_bytes(fed)[0] == 0.0
    cen = [{"round": 0, "val_accuracy": 0.4, "test_accuracy": 0.4},
           {"round": 1, "val_accuracy": 0.9, "test_accuracy": 0.82},
           {"round": 2, "val_accuracy": 0.85, "test_accuracy": 0.84}]
    result = convergence(fed, cen)
    assert result is not None and result.reference == Reference(0.82, 1, "best validation")
    # 95% of 0.82 = 0.779: first evaluated at round 6 (0.78), 6 rounds x 10 bytes;
    # 99% of 0.82 = 0.8118: never (0.805 at most)
    assert result.reached == {0.95: Reached(6, 60.0), 0.99: None}
    # the last tenth of 10 rounds is round 10 alone: rounds 9 and 10, 0.805 - 0.80 < 0.01
    assert result.plateau is not None and result.plateau.flat
    assert (result.plateau.first_round, result.plateau.last_round) == (9, 10)
    assert first_reaching(fed, 0.7) == Reached(6, 60.0)  # round 5 would be, had it been evaluated


def test_plateau_over_the_last_tenth_of_the_rounds() -> None:
    # 30 rounds: the last tenth is rounds 28..30 (round 27's 0.50 is outside it)
    accuracies: dict[int, float | None] = {n: 0.5 for n in range(28)}
    rising = plateau(curve({**accuracies, 28: 0.70, 29: 0.72, 30: 0.715}))
    assert rising is not None and not rising.flat  # 0.72 - 0.70 = 2 points
    assert (rising.first_round, rising.last_round) == (28, 30) and abs(rising.spread - 0.02) < 1e-12
    flat = plateau(curve({**accuracies, 28: 0.70, 29: None, 30: 0.705}))  # round 29 not evaluated
    assert flat is not None and flat.flat and (flat.first_round, flat.last_round) == (28, 30)
    # one point apart is not below one point; 0.9 points is
    assert plateau(curve({0: 0.5, 1: 0.25, 2: 0.26})) == Plateau(False, 0.26 - 0.25, 1, 2)
    assert plateau(curve({0: 0.5, 1: 0.25, 2: 0.259})) == Plateau(True, 0.259 - 0.25, 1, 2)
    assert plateau(curve({0: 0.5})) is None  # one evaluation: nothing to compare


def test_the_federated_round_is_selected_on_validation_like_the_reference() -> None:
    # the federated run's validation peaks at round 6 (0.83), where its test accuracy is 0.79;
    # its final round (10) tests higher, 0.80, but the test set chooses nothing
    fed = curve({0: 0.3, 3: 0.6, 6: 0.79, 9: 0.78, 10: 0.80}, up=6, down=4)
    for r, val in zip((r for r in fed if "test_accuracy" in r), (0.3, 0.62, 0.83, 0.81, 0.82), strict=True):
        r["val_accuracy"] = val
    cen = [{"round": 0, "val_accuracy": 0.4, "test_accuracy": 0.4},
           {"round": 1, "val_accuracy": 0.9, "test_accuracy": 0.82}]
    result = convergence(fed, cen)
    assert result is not None
    assert result.selected == Reference(0.79, 6, "best validation")
    assert result.reference == Reference(0.82, 1, "best validation")
