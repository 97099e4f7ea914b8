"""Simulated malicious and faulty clients, to test what strategies and update checks withstand.

Which clients are malicious is drawn once per run from the seed, so every round (and a resumed
run) sees the same ones. A malicious client either trains on corrupted data (label_flip) or
tampers with the state it sends back, or crashes mid-round (crash). Honest clients are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from fedcustom.core.config import AttackConfig
from fedcustom.core.types import State
from fedcustom.data.batching import Encoded

R = TypeVar("R")
ATTACK_STREAM = 2**31 - 1  # keeps the malicious draw apart from the per-round client sampling


class ClientCrash(RuntimeError):
    """A simulated client failure (attack kind 'crash')."""


def choose_malicious(num_clients: int, fraction: float, seed: int) -> list[int]:
    """round(fraction x clients), at least one, drawn from the seed alone."""
    k = min(num_clients, max(1, math.floor(fraction * num_clients + 0.5)))
    rng = np.random.default_rng([seed, ATTACK_STREAM])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def flip_labels(data: Encoded, num_labels: int) -> Encoded:
    """The same examples with label -> (label + 1) mod num_labels; the token matrix is shared."""
    return Encoded(data.input_ids, data.lengths, (data.labels + 1) % num_labels)


def tamper(kind: str, scale: float, global_state: State, state: State) -> State:
    """What a malicious client sends instead of `state` (its honest update from `global_state`)."""
    if kind == "sign_flip":
        return {k: g - (state[k] - g) for k, g in global_state.items()}
    if kind == "scale":
        return {k: g + scale * (state[k] - g) for k, g in global_state.items()}
    if kind == "nan":
        return {k: torch.full_like(v, math.nan) for k, v in state.items()}
    first = next(iter(state))
    out = dict(state)
    if kind == "inf":
        out[first] = state[first].clone()
        out[first].view(-1)[0] = math.inf
    elif kind == "wrong_keys":
        out[first + ".renamed"] = out.pop(first)
    elif kind == "wrong_shape":
        flat = state[first].reshape(-1)
        out[first] = torch.cat([flat, flat[:1]])
    return out


class Attack:
    """The run's malicious clients and what they do; Attack.none() leaves every client honest."""

    def __init__(self, kind: str, malicious: list[int], scale: float = 1.0, num_labels: int = 0) -> None:
        self.kind, self.malicious, self.scale, self.num_labels = kind, malicious, scale, num_labels
        self._flipped: tuple[Encoded, Encoded] | None = None  # (shared data, its flipped view)

    @classmethod
    def none(cls) -> Attack:
        return cls("none", [])

    @classmethod
    def from_config(cls, cfg: AttackConfig, num_clients: int, num_labels: int, seed: int) -> Attack:
        if cfg.kind == "none":
            return cls.none()
        return cls(cfg.kind, choose_malicious(num_clients, cfg.fraction, seed), cfg.scale, num_labels)

    def describe(self) -> dict[str, Any]:
        """What a run's records say about the attack: nothing when there is none."""
        return {"malicious": self.malicious} if self.malicious else {}

    def training_data(self, cid: int, data: Encoded) -> Encoded:
        if self.kind != "label_flip" or cid not in self.malicious:
            return data
        if self._flipped is None or self._flipped[0] is not data:  # one labels copy per run
            self._flipped = (data, flip_labels(data, self.num_labels))
        return self._flipped[1]

    def client_update(
        self, cid: int, global_state: State, data: Encoded, fit: Callable[[Encoded], tuple[State, R]]
    ) -> tuple[State, R]:
        """Run `fit` (local training on the given data -> (state, stats)) as client `cid` would."""
        if self.kind == "crash" and cid in self.malicious:
            raise ClientCrash(f"simulated crash of client {cid}")
        state, stats = fit(self.training_data(cid, data))
        if cid in self.malicious and self.kind != "label_flip":
            state = tamper(self.kind, self.scale, global_state, state)
        return state, stats
