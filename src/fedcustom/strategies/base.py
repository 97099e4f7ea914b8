"""The Strategy interface: how the server combines what clients send back.

A strategy is a pure function of (global state, client results) plus whatever server-side
optimizer state it keeps (exposed through state_dict/load_state_dict for checkpoints).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from fedcustom.core.types import Instructions, State, Update, is_owned_key, owned_key


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
    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        """The next global state from the current one and this round's accepted updates."""

    @classmethod
    def on_the_mean(cls, options: Any) -> bool:
        """Can it run on a securely aggregated mean, with these options?"""
        return cls.uses_only_the_mean

    @classmethod
    def config_problem(cls, options: Any, cfg: Any) -> str | None:
        """Why these options cannot run the experiment `cfg` (a config error, found when the config
        is built), or None."""
        return None

    def instruct(self, instructions: Instructions) -> Instructions:
        """What clients are asked this round, given the round's defaults (FedProx adds its mu)."""
        return instructions

    def round_record(self) -> dict[str, Any]:
        """Extra fields for the record of the round just aggregated (e.g. a privacy budget spent)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


def weighted_mean(updates: list[Update], keys: Iterable[str] | None = None) -> State:
    """Example-weighted mean of client states (of `keys`, else of every key of the first state),
    accumulated in float64 for exactness. It reads key by key, one client's tensor at a time (an
    update may be on disk: federation/inbox.py)."""
    if not updates:
        raise ValueError("cannot aggregate zero client results")
    total = float(sum(u.examples for u in updates))
    first = updates[0].state
    out = {}
    for key in first if keys is None else keys:
        acc = sum(u.state[key].double() * (u.examples / total) for u in updates)
        out[key] = acc.to(first[key].dtype)  # type: ignore[union-attr]
    return out



def owned_mean(global_state: State, updates: list[Update]) -> State:
    """Per element, the example-weighted mean of the client states over the clients that own it
    (an entry's ownership mask, core.types.owned_key, says where; an entry without one is owned
    whole by every client). An element no client owns keeps its global value; masks keep the
    global's. Without masks, or with masks that are all True, this is weighted_mean bit for bit:
    the same float64 products, summed in the same order."""
    if not updates:
        raise ValueError("cannot aggregate zero client results")
    plain = [k for k in global_state if not is_owned_key(k) and owned_key(k) not in global_state]
    mean = weighted_mean(updates, plain)
    out = {}
    for key, old in global_state.items():
        if key in mean or is_owned_key(key):
            out[key] = mean.get(key, old)
            continue
        weights = [u.state[owned_key(key)].double() * u.examples for u in updates]  # broadcastable
        owners = sum(weights)  # examples behind each element
        acc = sum(u.state[key].double() * torch.where(owners > 0, w / owners, 0.0)
                  for u, w in zip(updates, weights, strict=True))
        out[key] = torch.where(owners > 0, acc, old.double()).to(old.dtype)  # type: ignore[arg-type]
    return out
