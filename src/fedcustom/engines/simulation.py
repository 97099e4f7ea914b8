"""In-process simulation: one shared frozen base model; a client is (its rows, the state it gets).

Each sampled client loads the global state into the shared model, trains with the shared loop and
hands back its state. Payloads go through the real wire format both ways, so the byte counts are
the serialized sizes and nothing but the method's tensors crosses the engine boundary. Every
update is screened (validation.py) before the strategy sees it.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from tqdm.auto import tqdm

from fedcustom.data.batching import Encoded
from fedcustom.engines.base import ENGINES, Engine, Job, client_seed, peak_rss_mb, sample_clients
from fedcustom.methods.base import State
from fedcustom.payload import deserialize, serialize
from fedcustom.training import LocalResult, lr_scale
from fedcustom.validation import screen_updates


def fit(job: Job, down: bytes, cid: int, seed: int, progress: str,
        client_config: dict[str, Any], data: Encoded) -> tuple[State, LocalResult]:
    """One client's local training from the downloaded global state."""
    job.method.set_state(job.model, deserialize(down))
    local = job.method.fit(job.model, data, job.clients[cid].rows, job.train, seed, progress=progress,
                           cid=cid, **client_config)
    return job.method.get_state(job.model), local


@ENGINES.register("simulation")
class SimulationEngine(Engine):
    def run(self, job: Job) -> State:
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
            updates, loss_sum, examples, client_seconds, bytes_up = [], 0.0, 0, 0.0, 0
            forward_passes, backward_passes = 0, 0  # of the clients whose update arrived
            crashed: list[tuple[int, Exception]] = []
            on_time, dropped, late = job.faults.split(server_round, sampled)
            for cid in sorted(on_time + late):
                rows = job.clients[cid].rows
                train = partial(fit, job, down, cid, client_seed(job.seed, server_round, cid),
                                f"round {server_round} client {cid}", client_config)
                data = job.faults.training_data(cid, job.data)
                try:
                    update, local = job.attack.client_update(cid, state, data, train)
                except Exception as e:  # noqa: BLE001 - a failing client must not end the round
                    crashed.append((cid, e))
                    continue
                client_seconds += local.seconds
                if cid in late:  # trained, but the server closed the round without it
                    continue
                up = serialize(update)
                updates.append((cid, deserialize(up), len(rows)))
                bytes_up += len(up)
                forward_passes += local.forward_passes
                backward_passes += local.backward_passes
                loss_sum += local.loss * len(rows)
                examples += len(rows)
            if crashed and len(crashed) == len(on_time) + len(late):
                raise crashed[0][1]  # nobody could train: a systematic error, not a client fault
            accepted, rejected = screen_updates(state, updates, job.max_norm_factor)
            rejected = sorted(rejected + [{"client": cid, "reason": f"client failed: {e!r}"}
                                          for cid, e in crashed], key=lambda r: r["client"])
            if accepted:  # otherwise the global state (and the strategy's own state) stays as it was
                state = job.strategy.aggregate(state, accepted)
            method.set_state(model, state)
            metrics = job.evaluate(model)
            record = {
                "round": server_round,
                **metrics,
                "train_loss": loss_sum / examples if examples else None,  # None: no update arrived
                "clients": len(sampled),
                "dropped": dropped,
                "late": late,
                "accepted": len(accepted),
                "rejected": rejected,
                "bytes_down": len(down) * len(sampled),
                "bytes_up": bytes_up,
                "client_seconds": client_seconds,
                "forward_passes": forward_passes,
                "backward_passes": backward_passes,
                "round_seconds": time.perf_counter() - start,
                "peak_rss_mb": peak_rss_mb(),
                **job.strategy.round_record(),
            }
            rounds.set_postfix({k: round(v, 4) for k, v in metrics.items() if "accuracy" in k})
            job.on_round(record, state)
        return state
