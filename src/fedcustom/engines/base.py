"""The Engine interface: where clients run. An engine drives rounds of a Job and reports records.

Engines know nothing of a method's internals: they move the method's state (as serialized
payloads), call the shared training loop, and hand client results to the strategy.
"""

from __future__ import annotations

import resource
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from fedcustom.attacks import Attack
from fedcustom.config import TrainConfig
from fedcustom.data.batching import Encoded
from fedcustom.faults import Faults
from fedcustom.methods.base import Method, State
from fedcustom.registry import Registry
from fedcustom.strategies.base import Strategy


@dataclass(frozen=True)
class Client:
    cid: int
    rows: np.ndarray  # the rows of the shared training data this client holds


@dataclass
class Job:
    """One federated (or centralized: a single client) run, fully prepared.

    A job may start part-way (a resumed run): rounds start_round+1 .. rounds run from
    initial_state, the global state after start_round, with the strategy's own state already
    loaded. Client sampling and client seeds depend only on (seed, round, client), so the result
    is the same as running every round in one go.
    """

    model: nn.Module  # the one shared base model, already prepared by the method
    method: Method
    strategy: Strategy
    clients: list[Client]
    data: Encoded
    train: TrainConfig
    rounds: int
    fraction_fit: float
    seed: int
    evaluate: Callable[[nn.Module], dict[str, float]]
    # after each round (round 0: the initial evaluation): its record and the new global state
    on_round: Callable[[dict[str, Any], State], None]
    label: str = "run"
    start_round: int = 0
    initial_state: State | None = None  # None: the model's current state
    max_norm_factor: float = 10.0  # see validation.screen_updates
    attack: Attack = field(default_factory=Attack.none)
    faults: Faults = field(default_factory=Faults.none)


def sample_clients(num_clients: int, fraction: float, seed: int, server_round: int) -> list[int]:
    """Deterministic per (seed, round): the same config samples the same clients on any engine."""
    k = max(1, round(fraction * num_clients))
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def client_seed(seed: int, server_round: int, cid: int) -> int:
    return int(np.random.SeedSequence([seed, server_round, cid]).generate_state(1)[0])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Engine(ABC):
    @abstractmethod
    def run(self, job: Job) -> State:
        """Run the rounds of `job`, calling job.on_round after each; return the final state."""


ENGINES: Registry[type[Engine]] = Registry("engine")
