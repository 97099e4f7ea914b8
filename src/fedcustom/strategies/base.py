"""The Strategy interface: how the server combines what clients send back.

A strategy is a pure function of (global state, client results) plus whatever server-side
optimizer state it keeps (exposed through state_dict/load_state_dict for checkpoints).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from fedcustom.core.types import State

ClientResult = tuple[State, int]  # (client state, number of training examples)


class Strategy(ABC):
    name: ClassVar[str]  # set by the registry from the registered name
    summary: ClassVar[str]
    accepts: ClassVar[frozenset[str]] = frozenset({"weights"})
    # True where the result depends on the clients' updates only through their example-weighted
    # mean, so it can run on a securely aggregated mean (secure aggregation hides the rest).
    uses_only_the_mean: ClassVar[bool] = False
    Options: ClassVar[type]

    def __init__(self, options: object) -> None:
        self.options = options

    @abstractmethod
    def aggregate(self, global_state: State, results: list[ClientResult]) -> State:
        """The next global state from the current one and this round's client results."""

    def client_config(self, server_round: int) -> dict[str, Any]:
        """Values clients need this round (e.g. a proximal coefficient)."""
        return {}

    def round_record(self) -> dict[str, Any]:
        """Extra fields for the record of the round just aggregated (e.g. a privacy budget spent)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


def weighted_mean(results: list[ClientResult]) -> State:
    """Example-weighted mean of client states, accumulated in float64 for exactness."""
    if not results:
        raise ValueError("cannot aggregate zero client results")
    total = float(sum(n for _, n in results))
    keys = results[0][0].keys()
    out = {}
    for key in keys:
        acc = sum(state[key].double() * (n / total) for state, n in results)
        out[key] = acc.to(results[0][0][key].dtype)  # type: ignore[union-attr]
    return out

