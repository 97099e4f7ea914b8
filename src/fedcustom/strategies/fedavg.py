"""FedAvg (McMahan et al., 2017) as server SGD on the averaged client delta.

With server_lr 1 and momentum 0 the new global state is the example-weighted mean of the client
states; where states carry ownership masks (exchange "masked-weights": heterogeneous LoRA ranks),
each element's mean is over the clients that own it (strategies.base.owned_mean). A server
momentum > 0 is FedAvgM (Hsu et al., 2019): it carries the direction of past rounds, which matters
when each client takes only a few local steps per round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedcustom.core.config import check, opt
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import State, Update, is_owned_key
from fedcustom.strategies.base import Strategy, owned_mean


@dataclass(frozen=True)
class FedAvgOptions:
    server_lr: float = opt(1.0, "server step size on the averaged client delta")
    momentum: float = opt(0.0, "server momentum (FedAvgM when > 0)")

    def __post_init__(self) -> None:
        check(self.server_lr > 0, "server_lr", "a number > 0")
        check(0 <= self.momentum < 1, "momentum", "a number in [0, 1)")


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    summary = "example-weighted average of client states; server lr and momentum (FedAvgM)"
    accepts = frozenset({"weights", "masked-weights"})
    uses_only_the_mean = True  # of plain weights (secure aggregation cannot carry masks)
    Options = FedAvgOptions
    options: FedAvgOptions

    def __init__(self, options: FedAvgOptions) -> None:
        super().__init__(options)
        self.velocity: State = {}

    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        mean = owned_mean(global_state, updates)
        lr, beta = self.options.server_lr, self.options.momentum
        out = {}
        for key, old in global_state.items():
            if is_owned_key(key):  # the global model owns all of itself: its masks stay
                out[key] = old
                continue
            step = mean[key] - old
            if beta > 0:
                self.velocity[key] = beta * self.velocity.get(key, torch.zeros_like(step)) + step
                step = self.velocity[key]
            out[key] = old + lr * step
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"velocity.{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.velocity = {k.removeprefix("velocity."): v for k, v in state.items()}
