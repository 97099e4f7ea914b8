"""Byzantine-robust aggregation: coordinate-wise median, trimmed mean, (multi-)Krum.

Each rule counts every client once, whatever its number of examples: weighting by a count the
client reports itself would hand an attacker the weight it asks for. The arithmetic is Flower's
(flwr.server.strategy.aggregate) on float64 numpy copies of the states; it is imported lazily
because importing flwr.server costs a noticeable fraction of a second at CLI start-up, and because
flwr is an optional package (the `flower` extra): these three rules need it, the others do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from fedcustom.core.config import check, opt
from fedcustom.core.extras import require
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import State, Update
from fedcustom.strategies.base import Strategy

Arrays = list[np.ndarray]


def to_arrays(global_state: State, updates: list[Update]) -> list[tuple[Arrays, int]]:
    """Client states as Flower's (ndarrays, num_examples) pairs, every client weighted 1."""
    if not updates:
        raise ValueError("cannot aggregate zero client updates")
    return [([u.state[k].detach().cpu().double().numpy() for k in global_state], 1) for u in updates]


def flower_aggregate(name: str) -> ModuleType:
    """flwr.server.strategy.aggregate, or a one-line error naming the extra that installs flwr."""
    return require("flwr.server.strategy.aggregate", f"strategy '{name}'")


def to_state(arrays: Arrays, like: State) -> State:
    return {k: torch.from_numpy(np.asarray(a)).to(t.dtype).to(t.device)
            for (k, t), a in zip(like.items(), arrays, strict=True)}


@dataclass(frozen=True)
class MedianOptions:
    pass


@STRATEGIES.register("median", needs=("flwr",))
class Median(Strategy):
    summary = "coordinate-wise median of client states (unweighted by example count)"
    Options = MedianOptions

    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        aggregate = flower_aggregate(self.name)
        return to_state(aggregate.aggregate_median(to_arrays(global_state, updates)), global_state)


@dataclass(frozen=True)
class TrimmedMeanOptions:
    trim_fraction: float = opt(0.1, "share of clients cut from each end, per coordinate, before averaging "
                                    "(rounded down: 0.1 cuts nothing below 10 clients)")

    def __post_init__(self) -> None:
        check(0 <= self.trim_fraction < 0.5, "trim_fraction", "a number in [0, 0.5)")


@STRATEGIES.register("trimmed_mean", needs=("flwr",))
class TrimmedMean(Strategy):
    summary = "coordinate-wise mean after cutting the largest and smallest values (unweighted by examples)"
    Options = TrimmedMeanOptions
    options: TrimmedMeanOptions

    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        aggregate = flower_aggregate(self.name)
        arrays = aggregate.aggregate_trimmed_avg(to_arrays(global_state, updates), self.options.trim_fraction)
        return to_state(arrays, global_state)


@dataclass(frozen=True)
class KrumOptions:
    num_malicious: int = opt(1, "f: how many clients per round may be malicious (needs > 2f+2 clients)")
    multi_krum: int = opt(1, "m: average the m best-scored client states (1: Krum)")

    def __post_init__(self) -> None:
        check(self.num_malicious >= 0, "num_malicious", "an integer >= 0")
        check(self.multi_krum >= 1, "multi_krum", "an integer >= 1")


@STRATEGIES.register("krum", needs=("flwr",))
class Krum(Strategy):
    """Blanchard et al. (2017): score each state by its summed squared distance to its n-f-2
    nearest others and keep the lowest-scored (multi-Krum: average the m lowest)."""

    summary = "(multi-)Krum: the client state(s) closest to their neighbours (unweighted by examples)"
    Options = KrumOptions
    options: KrumOptions

    kept: str | None = None  # why the last aggregation kept the global state

    @classmethod
    def config_problem(cls, options: KrumOptions, cfg: Any) -> str | None:
        return cls.clients_problem(options, cfg.clients_per_round) if "federated" in cfg.modes else None

    @staticmethod
    def clients_problem(options: KrumOptions, per_round: int) -> str | None:
        f, m = options.num_malicious, options.multi_krum
        if per_round <= 2 * f + 2:
            return (f"krum with strategy.num_malicious = {f} needs more than {2 * f + 2} clients per "
                    f"round, got {per_round}: lower num_malicious or sample more clients")
        if m > per_round - f:
            return (f"strategy.multi_krum = {m}: expected at most clients per round - num_malicious "
                    f"= {per_round - f}")
        return None

    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        """The config has enough clients per round; when drop-outs or rejected updates leave too
        few for Krum to outvote f attackers, the round keeps the global state (and says so)."""
        aggregate = flower_aggregate(self.name)
        n, f, m = len(updates), self.options.num_malicious, self.options.multi_krum
        self.kept = self.clients_problem(self.options, n)
        if self.kept is not None:
            self.kept = f"{n} update(s) this round: {self.kept.split(': ')[0]}; the global state is kept"
            return dict(global_state)
        return to_state(aggregate.aggregate_krum(to_arrays(global_state, updates), f, m), global_state)

    def round_record(self) -> dict[str, Any]:
        kept, self.kept = self.kept, None
        return {"krum_kept": kept} if kept is not None else {}
