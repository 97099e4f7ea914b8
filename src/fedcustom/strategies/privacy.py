"""Client-level differential privacy: DP-FedAvg (McMahan et al., 2018, "Learning Differentially
Private Recurrent Language Models"), central or local.

Central (the default): each client's delta from the global state is clipped to L2 norm clip_norm,
the clipped deltas are averaged with UNIFORM weights (an example count is the client's own data;
weighting by it would give one client an unbounded share), and Gaussian noise with std
noise_multiplier * clip_norm / clients is added to the mean. That is noise_multiplier times the
sensitivity of the sum to adding or removing one client. The noisy mean then takes FedAvg's server
step (server_lr, momentum), which is post-processing and costs no privacy.

Local (local = true): every clipped delta gets its own noise, std noise_multiplier * clip_norm,
so no single update is ever seen clean. In the simulation the strategy adds it per client before
averaging, which gives the numbers clients adding it themselves would give (honest clients; the
update checks in federation/screening.py still see the clean updates). A deployment must add it on the
client: `privatize` is the method-agnostic transform a client applies before sending.

Accounting is opacus's RDP accountant: one Gaussian-mechanism step per aggregated round, sampled
at sample_rate (central) or 1 (local: the server sees who took part, so sampling hides nothing),
reported as epsilon for the configured delta in every round's record. Two approximations, as
usual in practice: the accountant assumes Poisson sampling where the engine samples a fixed number
of clients, and the mean divides by the clients that reported. Turn the norm screening off
(federation.max_norm_factor = 0) for a clean guarantee: it drops updates by a data-dependent rule
before the strategy sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from fedcustom.core.config import check, opt
from fedcustom.core.extras import require
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import Instructions, State, Update
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions

CENTRAL_STREAM = 0  # noise stream of the server's draw; client i of a round draws from stream i + 1


def delta_of(global_state: State, state: State) -> State:
    return {k: state[k].double() - g.double() for k, g in global_state.items()}


def clip(delta: State, clip_norm: float) -> tuple[State, bool]:
    """`delta` scaled to L2 norm at most clip_norm (over all tensors together); was it scaled?"""
    norm = math.sqrt(sum(float((d * d).sum()) for d in delta.values()))
    if norm <= clip_norm:
        return delta, False
    return {k: d * (clip_norm / norm) for k, d in delta.items()}, True


def uniform_mean(deltas: list[State]) -> State:
    return {k: sum(d[k] for d in deltas) / len(deltas) for k in deltas[0]}  # type: ignore[misc]


def gaussian(like: State, std: float, seed: int | None, *stream: int) -> State:
    """N(0, std^2) per entry, float64, reproducible from (seed, *stream); seed None: drawn from
    fresh OS entropy, which nobody else can recompute (torch's generator, as opacus's default).

    Drawn in sorted key order: a state read back from a checkpoint lists its keys in another order
    than the live one, and the draws must land on the same tensors after a resume."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0]))
    return {k: std * torch.randn(like[k].shape, generator=generator, dtype=torch.float64)
            for k in sorted(like)}


def privatize(global_state: State, state: State, clip_norm: float, std: float,
              seed: int | None, *stream: int) -> State:
    """What one client sends under client-side DP: its state with the delta clipped to clip_norm
    and Gaussian noise of `std` added (local DP: z * clip_norm; distributed DP under secure
    aggregation: z * clip_norm / sqrt(clients), so that the sum of the round's deltas carries z)."""
    delta, _ = clip(delta_of(global_state, state), clip_norm)
    noise = gaussian(delta, std, seed, *stream)
    return {k: (g.double() + delta[k] + noise[k]).to(g.dtype) for k, g in global_state.items()}


def spent(multipliers: list[float], sample_rate: float, delta: float) -> float:
    """Epsilon spent by one Gaussian-mechanism step per noise multiplier, from opacus's RDP accountant."""
    accountants = require("opacus.accountants", "strategy 'dp_fedavg'")  # slow import: only DP runs pay

    accountant = accountants.RDPAccountant()
    for z in multipliers:
        accountant.step(noise_multiplier=z, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta)) if multipliers else 0.0


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon spent after `rounds` Gaussian-mechanism steps, from opacus's RDP accountant."""
    return spent([noise_multiplier] * rounds, sample_rate, delta)


@dataclass(frozen=True)
class DPFedAvgOptions(FedAvgOptions):
    clip_norm: float = opt(1.0, "each client's delta is scaled down to at most this L2 norm")
    noise_multiplier: float = opt(
        1.0, "z: Gaussian noise std is z * clip_norm / clients on the mean (central and distributed) "
             "or z * clip_norm on each client's delta (local); 0 clips only and gives no guarantee")
    delta: float = opt(1e-5, "delta of the (epsilon, delta) guarantee reported every round")
    sample_rate: float = opt(1.0, "share of clients sampled per round, for the accountant (central, "
                                  "distributed): set it to federation.fraction_fit; 1 never understates "
                                  "epsilon")
    local: bool = opt(False, "local DP: each client's delta is noised on its own, not the mean")
    distributed: bool = opt(
        False, "distributed DP under secure aggregation (flower.secure_aggregation): each client clips "
               "its delta and adds noise of std z * clip_norm / sqrt(clients per round) before SecAgg+ "
               "masks it, so the server sees only the sum, which carries z")
    reproducible_noise: bool = opt(
        False, "distributed: clients draw their noise from (seed, round, client), which the server can "
               "recompute, instead of fresh randomness; for tests, never for a guarantee")
    seed: int = opt(0, "seed of the noise")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.clip_norm > 0, "clip_norm", "a number > 0")
        check(self.noise_multiplier >= 0, "noise_multiplier", "a number >= 0")
        check(0 < self.delta < 1, "delta", "a number in (0, 1)")
        check(0 < self.sample_rate <= 1, "sample_rate", "a number in (0, 1]")
        check(not (self.local and self.distributed), "distributed",
              "false with local = true (one or the other)")
        check(self.distributed or not self.reproducible_noise, "reproducible_noise",
              "false without distributed = true")
        check(self.seed >= 0, "seed", "an integer >= 0")


# SecAgg+ clips every coordinate of what a client sends to +-flower.secagg_clip: room for the
# clipped delta and this many standard deviations of the client's noise
NOISE_ROOM = 5.0


@STRATEGIES.register("dp_fedavg", needs=("opacus",))
class DPFedAvg(FedAvg):
    summary = ("client-level DP: clip each delta, uniform mean, Gaussian noise (central, local, or "
               "distributed under secure aggregation), epsilon")
    accepts = frozenset({"weights"})  # it clips and noises whole deltas: no ownership masks
    uses_only_the_mean = False  # it clips every client's delta (distributed: the clients do)
    Options = DPFedAvgOptions
    options: DPFedAvgOptions

    @classmethod
    def on_the_mean(cls, options: DPFedAvgOptions) -> bool:
        return options.distributed

    @classmethod
    def config_problem(cls, options: DPFedAvgOptions, cfg: Any) -> str | None:
        if not options.distributed:
            return None
        if not cfg.flower.secure_aggregation:
            return ("strategy.distributed = true: expected flower.secure_aggregation = true (each "
                    "client's noise is too small to protect it outside a secure sum)")
        room = options.clip_norm + NOISE_ROOM * client_noise_std(options, cfg.clients_per_round)
        if cfg.flower.secagg_clip < room:
            return (f"flower.secagg_clip = {cfg.flower.secagg_clip:g}: expected at least strategy.clip_norm "
                    f"+ {NOISE_ROOM:g} x the clients' noise std = {room:.4g}, or SecAgg+ would cut the noise")
        return None

    def __init__(self, options: DPFedAvgOptions) -> None:
        super().__init__(options)
        self.releases = 0  # noisy aggregates released so far: the accountant's step count
        self.multipliers: list[float] = []  # distributed: each release's effective noise multiplier
        self.asked = 0  # distributed: clients asked this round
        self.last: dict[str, Any] = {}

    def instruct(self, instructions: Instructions) -> Instructions:
        o = self.options
        if not o.distributed:
            return super().instruct(instructions)
        self.asked = max(instructions.clients, 1)
        return replace(super().instruct(instructions), dp_clip_norm=o.clip_norm,
                       dp_noise_std=client_noise_std(o, self.asked),
                       dp_seed=o.seed if o.reproducible_noise else -1)

    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        o, n = self.options, len(updates)
        if n == 0:
            raise ValueError("cannot aggregate zero client updates")
        if o.distributed:  # the securely summed mean of what the clients clipped and noised
            if n != 1:
                raise ValueError(f"distributed DP aggregates the one securely summed mean, got {n} updates")
            # every client weighs 1 under client-side DP, so the mean's examples count its clients
            k, asked = updates[0].examples, max(self.asked, 1)
            # k of the `asked` clients' noises: the sum carries z * sqrt(k / asked)
            self.multipliers.append(o.noise_multiplier * math.sqrt(min(k, asked) / asked))
            self.last = {"dp_noise_std": client_noise_std(o, asked) * math.sqrt(k) / k, "dp_clients": k}
            self.releases += 1
            return super().aggregate(global_state, updates)
        if o.local:  # what each client would send; the server only averages
            z, c = o.noise_multiplier, o.clip_norm
            sent = [privatize(global_state, u.state, c, z * c, o.seed, self.releases, i + 1)
                    for i, u in enumerate(updates)]
            mean = uniform_mean([delta_of(global_state, state) for state in sent])
            self.last = {"dp_noise_std": z * c / math.sqrt(n)}  # on the mean
        else:
            deltas, clipped = zip(*(clip(delta_of(global_state, u.state), o.clip_norm) for u in updates),
                                  strict=True)
            std = o.noise_multiplier * o.clip_norm / n
            noise = gaussian(global_state, std, o.seed, self.releases, CENTRAL_STREAM)
            mean = {k: m + noise[k] for k, m in uniform_mean(list(deltas)).items()}
            # for tuning clip_norm; the count of clipped clients is itself not private
            self.last = {"dp_clipped": sum(clipped), "dp_noise_std": std}
        self.releases += 1
        noisy = {k: (g.double() + mean[k]).to(g.dtype) for k, g in global_state.items()}
        return super().aggregate(global_state, [Update(noisy, 1)])

    def round_record(self) -> dict[str, Any]:
        record, self.last = self.last, {}
        o = self.options
        if o.noise_multiplier > 0:
            if o.distributed:
                record["dp_epsilon"] = spent(self.multipliers, o.sample_rate, o.delta)
            else:
                q = 1.0 if o.local else o.sample_rate
                record["dp_epsilon"] = epsilon(o.noise_multiplier, q, self.releases, o.delta)
            record["dp_delta"] = o.delta
        return record

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {**super().state_dict(), "dp.releases": torch.tensor(self.releases, dtype=torch.int64)}
        if self.options.distributed:
            state["dp.multipliers"] = torch.tensor(self.multipliers, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.releases = int(state.pop("dp.releases", torch.tensor(0)))
        multipliers = state.pop("dp.multipliers", None)
        self.multipliers = multipliers.tolist() if multipliers is not None else []
        super().load_state_dict(state)


def client_noise_std(options: DPFedAvgOptions, clients: int) -> float:
    """Distributed DP: each of `clients` clients adds this std, so their sum carries z * clip_norm."""
    return options.noise_multiplier * options.clip_norm / math.sqrt(max(clients, 1))
