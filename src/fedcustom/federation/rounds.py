"""The round loop: a Job (one prepared run), the server's side of every round, a client's update.

Engines (engines/) know nothing of a method's internals: they move the method's state (as
serialized payloads), and every client does its work through `client_update`. The server's
side of a round (sampling, faults, screening, aggregation, evaluation, the record) is one function,
`run_rounds`, for every engine; an engine only says how a round's clients are reached
(`train_clients`), and every client does its work through `client_update`.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from fedcustom.core.config import TrainConfig
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.types import State
from fedcustom.data.batching import Encoded
from fedcustom.federation.attacks import Attack
from fedcustom.federation.faults import Faults
from fedcustom.federation.screening import screen_updates
from fedcustom.methods.base import Method
from fedcustom.methods.training import LocalResult, lr_scale
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
    min_clients: int = 0  # a round with fewer updates than this fails the run (0: no minimum)


@dataclass
class ClientOutcome:
    """What the server got from one client in a round: an update, or the reason there is none."""

    up: bytes | None = None  # the serialized update
    local: LocalResult | None = None
    examples: int = 0  # the weight of the update (the client's number of training examples)
    error: str | None = None  # the client failed (its exception, as the client reported it)
    exception: Exception | None = None  # the exception itself, where the client ran in process
    missing: bool = False  # no answer in time (a dead node, a lost connection)
    sent: int | None = None  # bytes the client sent, where an engine measures them (else len(up))
    summed: list[int] = field(default_factory=list)  # SECURE_SUM: the clients in the mean


# The key of a securely aggregated update among a round's outcomes: the example-weighted mean of
# the `summed` clients' states, none of which the server saw on its own.
SECURE_SUM = -1


# (server round, serialized global state, clients to train, client config) -> outcome per client
TrainClients = Callable[[int, bytes, list[int], dict[str, Any]], dict[int, ClientOutcome]]


class RoundFailed(RuntimeError):
    """Too few clients answered a round; the run stops after its last checkpoint (resumable)."""


def sample_clients(num_clients: int, fraction: float, seed: int, server_round: int) -> list[int]:
    """Deterministic per (seed, round): the same config samples the same clients on any engine."""
    k = max(1, round(fraction * num_clients))
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def client_seed(seed: int, server_round: int, cid: int) -> int:
    return int(np.random.SeedSequence([seed, server_round, cid]).generate_state(1)[0])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def client_update(job: Job, cid: int, state: State, server_round: int,
                  client_config: dict[str, Any]) -> tuple[State, LocalResult]:
    """Client `cid`'s work in a round, wherever it runs: load the global `state`, train with the
    method (as a malicious or noisy client would, when the run simulates one), return its state."""
    seed = client_seed(job.seed, server_round, cid)

    def train(data: Encoded) -> tuple[State, LocalResult]:
        job.method.set_state(job.model, state)
        local = job.method.fit(job.model, data, job.clients[cid].rows, job.train, seed,
                               progress=f"round {server_round} client {cid}", cid=cid, **client_config)
        return job.method.get_state(job.model), local

    return job.attack.client_update(cid, state, job.faults.training_data(cid, job.data), train)


def run_rounds(job: Job, train_clients: TrainClients) -> State:
    """The server's loop: rounds start_round+1 .. rounds, job.on_round after each; the final state."""
    method, model = job.method, job.model
    state = method.get_state(model) if job.initial_state is None else job.initial_state
    method.set_state(model, state)
    if job.start_round == 0:
        job.on_round({"round": 0, **job.evaluate(model), **job.attack.describe(),
                      **job.faults.describe()}, state)
    rounds = tqdm(range(job.start_round + 1, job.rounds + 1), desc=job.label, unit="round",
                  initial=job.start_round, total=job.rounds)
    for server_round in rounds:
        start = time.perf_counter()
        sampled = sample_clients(len(job.clients), job.fraction_fit, job.seed, server_round)
        down = serialize(state)
        client_config = {**job.strategy.client_config(server_round),  # e.g. FedProx's prox_mu
                         "lr_scale": lr_scale(job.train, server_round, job.rounds)}
        on_time, dropped, late = job.faults.split(server_round, sampled)
        outcomes = train_clients(server_round, down, sorted(on_time + late), client_config)
        secure = outcomes.pop(SECURE_SUM, None)
        missing = [cid for cid, o in outcomes.items() if o.missing]
        failed = {cid: o.error for cid, o in outcomes.items() if o.error is not None}
        trained = {cid: o for cid, o in outcomes.items() if o.local is not None}
        reported = {cid: o for cid, o in sorted(trained.items()) if cid not in late}
        updates = [(cid, deserialize(o.up), o.examples) for cid, o in reported.items() if o.up is not None]
        if secure is not None:  # the clients' updates arrived only as their mean
            updates = [(SECURE_SUM, deserialize(secure.up), secure.examples)]  # type: ignore[arg-type]
        arrived = len(secure.summed) if secure is not None else len(updates)
        if outcomes and len(failed) == len(outcomes):  # a systematic error, not a client fault
            first = next(o for o in outcomes.values() if o.error is not None)
            raise first.exception or RoundFailed(f"round {server_round}: every client failed: {first.error}")
        if arrived < job.min_clients:
            raise RoundFailed(f"round {server_round}: {arrived} update(s) arrived, fewer than "
                              f"federation.min_clients = {job.min_clients} (missing clients: {missing})")
        accepted, rejected = screen_updates(state, updates, job.max_norm_factor)
        rejected = sorted(rejected + [{"client": cid, "reason": f"client failed: {e}"}
                                      for cid, e in failed.items()], key=lambda r: r["client"])
        if accepted:  # otherwise the global state (and the strategy's own state) stays as it was
            state = job.strategy.aggregate(state, accepted)
        method.set_state(model, state)
        metrics = job.evaluate(model)
        examples = sum(o.examples for o in reported.values())
        record = {
            "round": server_round,
            **metrics,
            # None: no update arrived
            "train_loss": sum(o.local.loss * o.examples for o in reported.values()) / examples  # type: ignore[union-attr]
            if examples else None,
            "clients": len(sampled),
            "dropped": dropped,
            "late": late,
            "missing": missing,
            "accepted": arrived if secure is not None and accepted else len(accepted),
            "rejected": rejected,
            "bytes_down": len(down) * len(sampled),
            "bytes_up": sum(o.sent if o.sent is not None else len(o.up or b"") for o in reported.values()),
            "client_seconds": sum(o.local.seconds for o in trained.values()),  # type: ignore[union-attr]
            # model passes over single examples of the clients whose update arrived (see LocalResult)
            "forward_passes": sum(o.local.forward_passes for o in reported.values()),  # type: ignore[union-attr]
            "backward_passes": sum(o.local.backward_passes for o in reported.values()),  # type: ignore[union-attr]
            **({"secure_aggregation": secure.summed} if secure is not None else {}),
            "round_seconds": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
            **job.strategy.round_record(),
        }
        rounds.set_postfix({k: round(v, 4) for k, v in metrics.items() if "accuracy" in k})
        job.on_round(record, state)
    return state
