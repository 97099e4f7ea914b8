"""The Engine interface: where clients run. An engine drives the rounds of a Job (federation.rounds)
and says only how a round's clients are reached; the server's side of a round is the same for all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from fedcustom.core.config import ExperimentConfig
from fedcustom.core.types import State
from fedcustom.federation.rounds import Job


class Engine(ABC):
    # What the engine can carry between server and clients (see Method.exchange).
    exchanges: frozenset[str] = frozenset({"weights", "masked-weights", "logits", "scores", "none"})

    @classmethod
    def launch(cls, cfg: ExperimentConfig, resume_dir: Path | None = None) -> Path | None:
        """Run a whole experiment from the command line where the engine's server does not live in
        this process (it starts its own). None: run it here (experiment.run_experiment)."""
        return None

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> Engine:
        """The engine for a run of `cfg` in this process (its own settings from the config)."""
        return cls()

    @abstractmethod
    def run(self, job: Job) -> State:
        """Run the rounds of `job`, calling job.on_round after each; return the final state."""

