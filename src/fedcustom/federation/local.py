"""Local-only training, the baseline that shows what federation buys: every client trains alone on
its own rows for the same rounds x local epochs as the federated run, starting from the same
initial state, with the same per-(round, client) seeds and learning-rate schedule, and is
evaluated on the same held-out splits. Nothing is exchanged.

Clients run one after another (one client's state in memory at a time, whatever the method), and
each finished client's metrics are handed to `on_client`, so a killed run resumes after the last
finished client. `local_records` turns the clients' metrics into one record per evaluated round:
the mean over clients, the example-weighted mean, and the min and max.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from fedcustom.core.device import model_device, peak_memory_mb, peak_rss_mb, reset_peak_memory
from fedcustom.core.types import Instructions, State
from fedcustom.federation.rounds import Clients, client_update, fit_context
from fedcustom.methods.training import lr_scale

LOCAL_STREAM = 7937  # keeps the local sample's draws apart from client sampling (seed, round)
# client id -> {round: metrics}; JSON-friendly (round keys become strings in a file)
ClientMetrics = dict[int, dict[int, dict[str, Any]]]


def local_sample(num_clients: int, k: int, seed: int) -> list[int]:
    """The clients a local run trains: all (k = 0), or k of them drawn from the seed."""
    if k == 0 or k >= num_clients:
        return list(range(num_clients))
    return sorted(np.random.default_rng([seed, LOCAL_STREAM]).choice(num_clients, k, replace=False).tolist())


def train_alone(clients: Clients, cid: int, initial: State, rounds: int,
                evaluates: Callable[[int], bool],
                evaluate: Callable[[nn.Module], dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Client `cid` on its own for `rounds` rounds: its metrics after every evaluated round, with
    the work since the previous evaluated one (passes, training seconds, and wall seconds with the
    evaluation), so that the records add up to the whole run. It continues from its own state;
    where that state is not its model (Method.own_client_models) it keeps its model and receives
    the initial state, which carries nothing, every round."""
    method = clients.method
    state, metrics = initial, {}
    device = model_device(clients.model)
    reset_peak_memory(device)  # a client's peak over all its rounds
    trained, forward, backward, start = 0.0, 0, 0, time.perf_counter()
    for server_round in range(1, rounds + 1):
        ctx = fit_context(clients.seed, server_round, cid,
                          Instructions(lr_scale(clients.train, server_round, rounds)))
        state, local = client_update(clients, initial if method.own_client_models else state, ctx)
        trained += local.seconds
        forward, backward = forward + local.forward_passes, backward + local.backward_passes
        if evaluates(server_round):
            model = method.client_model(clients.model, cid, state)
            metrics[server_round] = {**evaluate(model), "train_loss": local.loss,
                                     "client_seconds": trained, "forward_passes": forward,
                                     "backward_passes": backward,
                                     "round_seconds": time.perf_counter() - start,
                                     **peak_memory_mb(device)}
            trained, forward, backward, start = 0.0, 0, 0, time.perf_counter()
    return metrics


def local_records(per_client: ClientMetrics, examples: dict[int, int],
                  initial: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per evaluated round over the clients: every metric's mean over clients, and for
    accuracies also the example-weighted mean (`_weighted`), `_min` and `_max`. Round 0 is the
    shared initial state's evaluation."""
    records = [{"round": 0, **initial}]
    rounds = sorted({r for m in per_client.values() for r in m})
    total = sum(examples[c] for c in per_client)
    for r in rounds:
        # by client id: the sums do not depend on the order clients finished in (workers)
        at = {c: m[r] for c, m in sorted(per_client.items()) if r in m}
        record: dict[str, Any] = {"round": r, "clients": len(at)}
        keys = [k for k, v in next(iter(at.values())).items() if isinstance(v, int | float)]
        for key in keys:
            values = [m[key] for m in at.values()]
            record[key] = statistics.fmean(values)
            if key.endswith("accuracy"):
                record[f"{key}_weighted"] = sum(at[c][key] * examples[c] for c in at) / total
                record[f"{key}_min"], record[f"{key}_max"] = min(values), max(values)
        for key in ("client_seconds", "round_seconds", "forward_passes", "backward_passes"):
            if key in next(iter(at.values())):  # totals over the clients, not their means
                record[key] = sum(m[key] for m in at.values())
        record.update(bytes_up=0, bytes_down=0, peak_rss_mb=peak_rss_mb())
        peaks = [m["peak_accelerator_mb"] for m in at.values() if "peak_accelerator_mb" in m]
        if peaks:  # on a GPU: the largest client's, not their mean
            record["peak_accelerator_mb"] = max(peaks)
        records.append(record)
    return records
