"""The Engine interface: where clients run. An engine drives rounds of a Job and reports records.

Engines know nothing of a method's internals: they move the method's state (as serialized
payloads), call the shared training loop, and hand client results to the strategy.
"""

from __future__ import annotations

import resource
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedcustom.config import TrainConfig
from fedcustom.data.batching import Encoded
from fedcustom.methods.base import Method, State
from fedcustom.registry import Registry
from fedcustom.strategies.base import Strategy


@dataclass(frozen=True)
class Client:
    cid: int
    rows: np.ndarray  # the rows of the shared training data this client holds


@dataclass
class Job:
    """One federated (or centralized: a single client) run, fully prepared."""

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
    on_round: Callable[[dict[str, Any]], None]
    label: str = "run"


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
        """Run every round of `job`, calling job.on_round after each; return the final state."""


ENGINES: Registry[type[Engine]] = Registry("engine")
