"""In-process simulation: one shared frozen base model; a client is (its rows, the state it gets).

Each sampled client loads the global state into the shared model, trains with the shared loop and
hands back its state. Payloads go through the real wire format both ways, so the byte counts are
the serialized sizes and nothing but the method's tensors crosses the engine boundary.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from fedcustom.engines.base import ENGINES, Engine, Job, client_seed, peak_rss_mb, sample_clients
from fedcustom.methods.base import State
from fedcustom.payload import deserialize, serialize
from fedcustom.training import train_local


@ENGINES.register("simulation")
class SimulationEngine(Engine):
    def run(self, job: Job) -> State:
        method, model = job.method, job.model
        state = method.get_state(model)
        job.on_round({"round": 0, **job.evaluate(model)})
        rounds = tqdm(range(1, job.rounds + 1), desc=job.label, unit="round")
        for server_round in rounds:
            start = time.perf_counter()
            sampled = sample_clients(len(job.clients), job.fraction_fit, job.seed, server_round)
            down = serialize(state)
            client_config = job.strategy.client_config(server_round)  # e.g. FedProx's prox_mu
            results, loss_sum, examples, client_seconds, bytes_up = [], 0.0, 0, 0.0, 0
            for cid in sampled:
                client = job.clients[cid]
                method.set_state(model, deserialize(down))
                local = train_local(model, method, job.data, client.rows, job.train,
                                    client_seed(job.seed, server_round, cid),
                                    progress=f"round {server_round} client {cid}", **client_config)
                up = serialize(method.get_state(model))
                results.append((deserialize(up), len(client.rows)))
                bytes_up += len(up)
                client_seconds += local.seconds
                loss_sum += local.loss * len(client.rows)
                examples += len(client.rows)
            state = job.strategy.aggregate(state, results)
            method.set_state(model, state)
            metrics = job.evaluate(model)
            record = {
                "round": server_round,
                **metrics,
                "train_loss": loss_sum / examples,
                "clients": len(sampled),
                "bytes_down": len(down) * len(sampled),
                "bytes_up": bytes_up,
                "client_seconds": client_seconds,
                "round_seconds": time.perf_counter() - start,
                "peak_rss_mb": peak_rss_mb(),
            }
            rounds.set_postfix({k: round(v, 4) for k, v in metrics.items() if "accuracy" in k})
            job.on_round(record)
        return state
