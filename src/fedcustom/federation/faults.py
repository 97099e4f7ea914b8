"""Unreliable clients and noisy data, seeded so that every engine and a resumed run see the same.

Per round, each sampled client independently drops out (never trains, sends nothing) or is a
straggler (trains, but its update misses the deadline and is discarded). Noisy clients are drawn
once per run; a share of their labels is replaced by uniformly random labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedcustom.core.config import FaultsConfig
from fedcustom.data.batching import Encoded

FAULT_STREAM = 2**31 - 2  # apart from client sampling and the attack's draw


class Faults:
    def __init__(self, cfg: FaultsConfig, num_clients: int, num_labels: int, seed: int) -> None:
        self.cfg, self.num_labels, self.seed = cfg, num_labels, seed
        k = math.floor(cfg.noisy_clients * num_clients + 0.5)
        rng = np.random.default_rng([seed, FAULT_STREAM])
        self.noisy = sorted(rng.choice(num_clients, size=k, replace=False).tolist())
        self._noisy_data: tuple[Encoded, Encoded] | None = None  # (shared data, its noisy view)

    @classmethod
    def none(cls) -> Faults:
        return cls(FaultsConfig(), 0, 0, 0)

    def describe(self) -> dict[str, Any]:
        return {"noisy_clients": self.noisy} if self.noisy else {}

    def split(self, server_round: int, sampled: list[int]) -> tuple[list[int], list[int], list[int]]:
        """(clients that report in time, clients that dropped out, stragglers) of a round."""
        rng = np.random.default_rng([self.seed, FAULT_STREAM, server_round])
        drop = rng.random(len(sampled)) < self.cfg.dropout
        late = rng.random(len(sampled)) < self.cfg.stragglers
        on_time = [c for c, d, s in zip(sampled, drop, late, strict=True) if not d and not s]
        dropped = [c for c, d in zip(sampled, drop, strict=True) if d]
        stragglers = [c for c, d, s in zip(sampled, drop, late, strict=True) if s and not d]
        return on_time, dropped, stragglers

    def training_data(self, cid: int, data: Encoded) -> Encoded:
        """The data client `cid` trains on: noisy labels for a noisy client (one copy per run)."""
        if cid not in self.noisy:
            return data
        if self._noisy_data is None or self._noisy_data[0] is not data:
            rng = np.random.default_rng([self.seed, FAULT_STREAM, len(data)])
            replace = torch.from_numpy(rng.random(len(data)) < self.cfg.noise_rate)
            random_labels = torch.from_numpy(rng.integers(0, self.num_labels, size=len(data)))
            labels = torch.where(replace, random_labels.to(data.labels.dtype), data.labels)
            self._noisy_data = (data, Encoded(data.input_ids, data.lengths, labels))
        return self._noisy_data[1]
