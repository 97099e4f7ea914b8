"""The round loop: a Job (one prepared run), the server's side of every round, a client's update.

Engines (engines/) know nothing of a method's internals: they move the method's state (as
serialized payloads) and the round's Instructions, and bring back Replies (federation/replies.py).
The server's side of a round (sampling, faults, screening, aggregation, evaluation, the record)
is one function, `run_rounds`, for every engine; an engine only says how a round's clients are
reached (`train_clients`), and every client does its work through `client_update`. An engine
hands each reply to the round as soon as it has it (`Receive`): the round parses its payload then
and drops the bytes, and keeps the updates beyond a memory budget on disk until aggregated
(federation/inbox.py), so past that budget a round's memory does not grow with its clients.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from fedcustom.core.config import FederationConfig, TrainConfig
from fedcustom.core.device import model_device, peak_memory_mb, peak_rss_mb, reset_peak_memory
from fedcustom.core.errors import UserError
from fedcustom.core.log import bars_off
from fedcustom.core.payload import serialize
from fedcustom.core.types import FitContext, Instructions, LocalResult, State
from fedcustom.data.batching import Encoded
from fedcustom.federation.attacks import Attack
from fedcustom.federation.faults import Faults
from fedcustom.federation.inbox import Inbox
from fedcustom.federation.replies import TrainClients, collect, payload_limit, take
from fedcustom.federation.screening import screen_updates
from fedcustom.methods.base import Method
from fedcustom.methods.training import lr_scale
from fedcustom.strategies.base import Strategy
from fedcustom.strategies.privacy import privatize


@dataclass
class Clients:
    """The clients' side of a run: what every client's local work needs, wherever it runs (in this
    process, or on a Flower SuperNode, which builds only this)."""

    model: nn.Module  # the one shared base model, already prepared by the method
    method: Method
    data: Encoded  # the shared training data; each client holds some of its rows
    rows: list[np.ndarray]  # rows[cid]: client cid's rows of `data`
    train: TrainConfig
    seed: int
    attack: Attack = field(default_factory=Attack.none)
    faults: Faults = field(default_factory=Faults.none)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Job:
    """One federated (or centralized: a single client) run, fully prepared: the clients and the
    server's side (strategy, rounds, sampling, evaluation, where records go).

    A job may start part-way (a resumed run): rounds start_round+1 .. rounds run from
    initial_state, the global state after start_round, with the strategy's own state already
    loaded. Client sampling and client seeds depend only on (seed, round, client), so the result
    is the same as running every round in one go.
    """

    clients: Clients
    strategy: Strategy
    rounds: int
    fraction_fit: float
    evaluate: Callable[[nn.Module], dict[str, float]]
    # after each round (round 0: the initial evaluation): its record and the new global state
    on_round: Callable[[dict[str, Any], State], None]
    label: str = "run"
    start_round: int = 0
    initial_state: State | None = None  # None: the model's current state
    max_norm_factor: float = 10.0  # see screening.screen_updates
    # MB of a round's client payloads the server keeps in memory; the rest wait on disk (inbox.py)
    update_memory_mb: float = FederationConfig.update_memory_mb
    min_clients: int = 0  # a round with fewer updates than this fails the run (0: no minimum)
    eval_every: int = 1  # evaluate after every this many rounds (and always after the last)
    # stop once val_accuracy has not improved for this many evaluations (0: never); `history` holds
    # the records of rounds before start_round, so a resumed run decides as an uninterrupted one
    patience: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def evaluates(self, server_round: int) -> bool:
        return evaluated(server_round, self.eval_every, self.rounds)


def evaluated(server_round: int, every: int, rounds: int) -> bool:
    """Is `server_round` of `rounds` evaluated, at one evaluation every `every` rounds? The last
    always is (round 0, before training, too: run_rounds evaluates it before the loop)."""
    return server_round % every == 0 or server_round == rounds


class RoundFailed(UserError):
    """Too few clients answered a round: an expected stop (one line, exit 2) after the last
    checkpoint, from which `fedcustom run --resume` goes on."""


def sample_clients(num_clients: int, fraction: float, seed: int, server_round: int) -> list[int]:
    """Deterministic per (seed, round): the same config samples the same clients on any engine."""
    k = max(1, round(fraction * num_clients))
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def client_seed(seed: int, server_round: int, cid: int) -> int:
    return int(np.random.SeedSequence([seed, server_round, cid]).generate_state(1)[0])


def client_update(clients: Clients, state: State, ctx: FitContext) -> tuple[State, LocalResult]:
    """Client ctx.cid's work in a round, wherever it runs: load the global `state`, train with the
    method (as a malicious or noisy client would, when the run simulates one), return its state."""

    def train(data: Encoded) -> tuple[State, LocalResult]:
        clients.method.set_state(clients.model, state)
        local = clients.method.fit(clients.model, data, clients.rows[ctx.cid], clients.train, ctx)
        return clients.method.get_state(clients.model), local

    data = clients.faults.training_data(ctx.cid, clients.data)
    update, local = clients.attack.client_update(ctx.cid, state, data, train)
    i = ctx.instructions
    if i.dp_clip_norm > 0:  # client-side DP: what leaves the client is clipped and noised
        seed = i.dp_seed if i.dp_seed >= 0 else None
        update = privatize(state, update, i.dp_clip_norm, i.dp_noise_std, seed, ctx.server_round, ctx.cid + 1)
    return update, local


def fit_context(seed: int, server_round: int, cid: int, instructions: Instructions) -> FitContext:
    return FitContext(cid, server_round, client_seed(seed, server_round, cid), instructions)


def new_best(records: list[dict[str, Any]], key: str = "val_accuracy") -> bool:
    """Whether the last record has `key` and beats every earlier one (ties keep the earliest)."""
    if not records or key not in records[-1]:
        return False
    return all(records[-1][key] > r[key] for r in records[:-1] if key in r)


def stalled(records: list[dict[str, Any]], patience: int) -> bool:
    """Early stopping: the last `patience` evaluations of val_accuracy all came after its best."""
    values = [r["val_accuracy"] for r in records if "val_accuracy" in r]
    if patience <= 0 or not values:
        return False
    best = values.index(max(values))  # the earliest best
    return len(values) - 1 - best >= patience


def run_rounds(job: Job, train_clients: TrainClients) -> State:
    """The server's loop: rounds start_round+1 .. rounds, job.on_round after each; the final state.
    Rounds that job.evaluates() get the held-out metrics; early stopping (job.patience) may end
    the loop before the last round."""
    clients = job.clients
    method, model = clients.method, clients.model
    state = method.get_state(model) if job.initial_state is None else job.initial_state
    method.adopt(model, state)
    history = list(job.history)
    if job.start_round == 0:
        record = {"round": 0, **job.evaluate(model), **clients.attack.describe(), **clients.faults.describe()}
        history.append(record)
        job.on_round(record, state)
    if stalled(history, job.patience):
        return state  # a resumed run that had already stopped early
    rounds = tqdm(range(job.start_round + 1, job.rounds + 1), desc=job.label, unit="round",
                  initial=job.start_round, total=job.rounds, disable=bars_off())
    device = model_device(model)
    for server_round in rounds:
        start = time.perf_counter()
        reset_peak_memory(device)  # the record's peak_accelerator_mb is this round's
        sampled = sample_clients(len(clients), job.fraction_fit, clients.seed, server_round)
        down = serialize(state)
        instructions = job.strategy.instruct(
            Instructions(lr_scale(clients.train, server_round, job.rounds), clients=len(sampled)))
        on_time, dropped, late = clients.faults.split(server_round, sampled)
        asked = sorted(on_time + late)  # a client that dropped out is sent nothing
        # a client's bytes are parsed only within a size limit, as they arrive; the updates are
        # kept until aggregated, beyond the memory budget on disk, and the disk is freed after
        with Inbox(payload_limit(len(down)), int(job.update_memory_mb * 2**20)) as inbox:
            answers = train_clients(server_round, down, asked, instructions,
                                    functools.partial(take, inbox, set(late)))
            replies, secure = answers.replies, answers.secure_mean
            missing = [cid for cid, r in replies.items() if r.missing]
            failed = {cid: r.failure for cid, r in replies.items() if r.failure is not None}
            trained = {cid: r for cid, r in replies.items() if r.local is not None}
            reported = {cid: r for cid, r in sorted(trained.items()) if cid not in late}
            updates, unreadable = collect(inbox, reported, secure)
            arrived = len(secure.clients) if secure is not None else len(updates)
            if replies and len(failed) == len(replies):  # a systematic error, not a client fault
                first = next(iter(failed.values()))
                raise first.exception or RoundFailed(
                    f"round {server_round}: every client failed: {first.message}")
            if arrived < job.min_clients:
                raise RoundFailed(f"round {server_round}: {arrived} update(s) arrived, fewer than "
                                  f"federation.min_clients = {job.min_clients} (missing clients: "
                                  f"{missing}); the last round is checkpointed: `fedcustom run --resume "
                                  "RUN_DIR` goes on")
            accepted, rejected = screen_updates(state, updates, job.max_norm_factor)
            rejected += [{"client": cid, "reason": f"client failed: {f.message}"}
                         for cid, f in failed.items()]
            rejected += [{"client": cid, "reason": f"unreadable update: {e}"}
                         for cid, e in unreadable.items()]
            rejected.sort(key=lambda r: (isinstance(r["client"], str), r["client"]))
            if accepted:  # otherwise the global state (and the strategy's own state) stays as it was
                state = job.strategy.aggregate(state, accepted)
                method.adopt(model, state)
            else:
                method.set_state(model, state)
            n_accepted = arrived if secure is not None and accepted else len(accepted)
            del updates, accepted  # the evaluation runs without the round's updates in memory
        metrics = job.evaluate(model) if job.evaluates(server_round) else {}
        examples = sum(r.examples for r in reported.values())
        record = {
            "round": server_round,
            **metrics,
            # None: no update arrived
            "train_loss": sum(r.local.loss * r.examples for r in reported.values()) / examples  # type: ignore[union-attr]
            if examples else None,
            "clients": len(sampled),
            "dropped": dropped,
            "late": late,
            "missing": missing,
            "accepted": n_accepted,
            "rejected": rejected,
            "bytes_down": len(down) * len(asked),
            "bytes_up": sum(r.sent if r.sent is not None else len(r.update or b"")
                            for r in reported.values()),
            "client_seconds": sum(r.local.seconds for r in trained.values()),  # type: ignore[union-attr]
            # model passes over single examples of the clients whose update arrived (see LocalResult)
            "forward_passes": sum(r.local.forward_passes for r in reported.values()),  # type: ignore[union-attr]
            "backward_passes": sum(r.local.backward_passes for r in reported.values()),  # type: ignore[union-attr]
            **({"secure_aggregation": secure.clients} if secure is not None else {}),
            "round_seconds": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
            **peak_memory_mb(device),  # on a GPU: this process's peak there this round
            **job.strategy.round_record(),
        }
        rounds.set_postfix({k: round(v, 4) for k, v in metrics.items() if "accuracy" in k})
        history.append(record)
        if stalled(history, job.patience):
            record["early_stop"] = True  # the last round of this run
        job.on_round(record, state)
        if record.get("early_stop"):
            break
    return state
