"""FedProx (Li et al., 2020): FedAvg aggregation, plus a proximal term on every client.

Each client minimizes loss + (mu/2) * ||w - w_global||^2, which keeps heterogeneous clients from
drifting far from the global state during their local steps. The server side is FedAvg; the term
itself lives in the shared training loop, which gets mu through client_config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedcustom.core.config import check, opt
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import Instructions
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions


@dataclass(frozen=True)
class FedProxOptions(FedAvgOptions):
    mu: float = opt(0.01, "proximal coefficient: clients add (mu/2)*||w - w_global||^2 to their loss")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.mu >= 0, "mu", "a number >= 0")


@STRATEGIES.register("fedprox")
class FedProx(FedAvg):
    summary = "FedAvg whose clients add a proximal term (mu/2)*||w - w_global||^2 to their loss"
    Options = FedProxOptions
    options: FedProxOptions

    def instruct(self, instructions: Instructions) -> Instructions:
        return replace(instructions, prox_mu=self.options.mu)
