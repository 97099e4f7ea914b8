"""Server optimizers on the averaged client delta: FedAdam, FedYogi, FedAdagrad (Reddi et al., 2021,
"Adaptive Federated Optimization") and FedAvgM (Hsu et al., 2019).

The server treats g = -(weighted_mean(client states) - global) as a gradient and lets a real torch
optimizer take one step with it. So FedAdam IS torch.optim.Adam (bias correction included) on the
pseudo-gradient, FedAdagrad is torch.optim.Adagrad; torch has no Yogi, so Yogi is written below in
Adam's form, only its second moment differs. The optimizer's state (moments, step counts) is the
strategy's state_dict, so a resumed run continues the same trajectory.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from fedcustom.core.config import check, opt
from fedcustom.core.errors import UserError
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import State, Update
from fedcustom.strategies.base import Strategy, weighted_mean
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions


@dataclass(frozen=True)
class FedOptOptions:
    server_lr: float = opt(1e-2, "server step size (eta in Reddi et al.)")
    beta1: float = opt(0.9, "decay of the first moment (fedadam, fedyogi; torch's Adagrad has none)")
    beta2: float = opt(0.99, "decay of the second moment (fedadam, fedyogi)")
    eps: float = opt(1e-3, "added to sqrt(v) (tau in Reddi et al.): smaller is more adaptive")

    def __post_init__(self) -> None:
        check(self.server_lr > 0, "server_lr", "a number > 0")
        check(0 <= self.beta1 < 1, "beta1", "a number in [0, 1)")
        check(0 <= self.beta2 < 1, "beta2", "a number in [0, 1)")
        check(self.eps > 0, "eps", "a number > 0")


class Yogi(torch.optim.Optimizer):
    """Yogi (Zaheer et al., 2018) with Adam's bias correction: v moves towards g^2 additively,
    v <- v - (1 - beta2) * g^2 * sign(v - g^2), so a burst of large gradients cannot make v
    forget the past as fast as Adam's exponential average does."""

    def __init__(self, params: Any, lr: float, betas: tuple[float, float], eps: float) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                g, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
                g2 = g * g
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.addcmul_(torch.sign(v - g2), g2, value=-(1 - beta2))
                denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))


class FedOpt(Strategy):
    """One torch optimizer over copies of the global tensors, stepped once per round."""

    uses_only_the_mean = True

    Options = FedOptOptions
    options: FedOptOptions

    def __init__(self, options: FedOptOptions) -> None:
        super().__init__(options)
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.pending: dict[str, torch.Tensor] = {}  # loaded state, applied once the params exist

    @abstractmethod
    def make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """The server optimizer over `params`, from self.options."""

    def setup(self, global_state: State) -> torch.optim.Optimizer:
        # moments in at least float32, so a half-precision state still gets a sane v
        self.params = {k: torch.zeros_like(v, dtype=torch.promote_types(v.dtype, torch.float32))
                       for k, v in global_state.items()}
        optimizer = self.make_optimizer(list(self.params.values()))
        for full, t in self.pending.items():  # "exp_avg.<key>" -> optimizer.state[param]["exp_avg"]
            name, key = full.split(".", 1)
            if key not in self.params:
                raise UserError(f"checkpoint holds server optimizer state for unknown tensor '{key}'")
            optimizer.state[self.params[key]][name] = t.clone()
        self.pending = {}
        return optimizer

    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        mean = weighted_mean(updates)
        if self.optimizer is None or self.params.keys() != global_state.keys():
            self.optimizer = self.setup(global_state)
        with torch.no_grad():
            for key, p in self.params.items():
                p.copy_(global_state[key])
                p.grad = p.detach() - mean[key].to(p.dtype)  # minus the averaged delta
        self.optimizer.step()
        return {k: p.detach().to(global_state[k].dtype).clone() for k, p in self.params.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.optimizer is None:
            return dict(self.pending)
        return {f"{name}.{key}": t for key, p in self.params.items()
                for name, t in self.optimizer.state.get(p, {}).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.pending, self.optimizer = dict(state), None


@STRATEGIES.register("fedadam")
class FedAdam(FedOpt):
    summary = "server torch.optim.Adam on minus the averaged client delta (Reddi et al. 2021)"

    def make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        o = self.options
        return torch.optim.Adam(params, lr=o.server_lr, betas=(o.beta1, o.beta2), eps=o.eps)


@STRATEGIES.register("fedyogi")
class FedYogi(FedOpt):
    summary = "server Yogi on minus the averaged client delta: v moves additively (Reddi et al. 2021)"

    def make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        o = self.options
        return Yogi(params, lr=o.server_lr, betas=(o.beta1, o.beta2), eps=o.eps)


@STRATEGIES.register("fedadagrad")
class FedAdagrad(FedOpt):
    summary = "server torch.optim.Adagrad on minus the averaged client delta (Reddi et al. 2021)"

    def make_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adagrad(params, lr=self.options.server_lr, eps=self.options.eps)


@dataclass(frozen=True)
class FedAvgMOptions(FedAvgOptions):
    momentum: float = opt(0.9, "server momentum on the averaged client delta")


@STRATEGIES.register("fedavgm")
class FedAvgM(FedAvg):
    """FedAvg's server step with momentum on by default: the same as fedavg with momentum > 0."""

    summary = "FedAvg with server momentum (Hsu et al. 2019); fedavg with momentum 0.9"
    Options = FedAvgMOptions
