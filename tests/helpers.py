"""Small builders shared by tests."""

from __future__ import annotations

from fedcustom.core.types import State, Update


def updates(pairs: list[tuple[State, int]]) -> list[Update]:
    """Updates from (state, examples) pairs, as hand-written in strategy tests."""
    return [Update(state, n) for state, n in pairs]
