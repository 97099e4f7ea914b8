"""FedAdam, FedYogi and FedAdagrad (Reddi et al., 2021, "Adaptive Federated Optimization").

The server treats delta = weighted_mean(client states) - global as a pseudo-gradient and takes an
adaptive step on it:

    m <- beta1 * m + (1 - beta1) * delta
    v <- second_moment(v, delta^2)            # the only difference between the three
    global <- global + server_lr * m / (sqrt(v) + tau)

As in the paper (Algorithm 2) there is no bias correction and v starts at tau^2, m at 0.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from fedcustom.config import check, opt
from fedcustom.strategies.base import STRATEGIES, ClientResult, State, Strategy, weighted_mean


@dataclass(frozen=True)
class FedOptOptions:
    server_lr: float = opt(1e-2, "server step size (eta in the paper)")
    beta1: float = opt(0.9, "decay of the first moment (server momentum)")
    beta2: float = opt(0.99, "decay of the second moment (unused by fedadagrad)")
    tau: float = opt(1e-3, "adaptivity: added to sqrt(v); smaller is more adaptive")

    def __post_init__(self) -> None:
        check(self.server_lr > 0, "server_lr", "a number > 0")
        check(0 <= self.beta1 < 1, "beta1", "a number in [0, 1)")
        check(0 <= self.beta2 < 1, "beta2", "a number in [0, 1)")
        check(self.tau > 0, "tau", "a number > 0")


class FedOpt(Strategy):
    """The shared adaptive server step; subclasses only say how the second moment moves."""

    Options = FedOptOptions
    options: FedOptOptions

    def __init__(self, options: FedOptOptions) -> None:
        super().__init__(options)
        self.m: State = {}
        self.v: State = {}

    @abstractmethod
    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        """The next v from the previous v and the squared pseudo-gradient."""

    def aggregate(self, global_state: State, results: list[ClientResult]) -> State:
        mean = weighted_mean(results)
        o = self.options
        out = {}
        for key, old in global_state.items():
            # moments in at least float32, so a half-precision state still gets a sane v
            dtype = torch.promote_types(old.dtype, torch.float32)
            delta = mean[key].to(dtype) - old.to(dtype)
            m = self.m.get(key, torch.zeros_like(delta))
            v = self.v.get(key, torch.full_like(delta, o.tau**2))
            self.m[key] = o.beta1 * m + (1 - o.beta1) * delta
            self.v[key] = self.second_moment(v, delta * delta)
            step = o.server_lr * self.m[key] / (self.v[key].sqrt() + o.tau)
            out[key] = (old.to(dtype) + step).to(old.dtype)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"m.{k}": t for k, t in self.m.items()}, **{f"v.{k}": t for k, t in self.v.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.m = {k.removeprefix("m."): t for k, t in state.items() if k.startswith("m.")}
        self.v = {k.removeprefix("v."): t for k, t in state.items() if k.startswith("v.")}


@STRATEGIES.register("fedadam")
class FedAdam(FedOpt):
    summary = "server Adam on the averaged client delta (Reddi et al. 2021)"

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return self.options.beta2 * v + (1 - self.options.beta2) * delta_sq


@STRATEGIES.register("fedyogi")
class FedYogi(FedOpt):
    summary = "server Yogi on the averaged client delta: v grows additively (Reddi et al. 2021)"

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.options.beta2) * delta_sq * torch.sign(v - delta_sq)


@STRATEGIES.register("fedadagrad")
class FedAdagrad(FedOpt):
    summary = "server Adagrad on the averaged client delta (Reddi et al. 2021)"

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v + delta_sq
