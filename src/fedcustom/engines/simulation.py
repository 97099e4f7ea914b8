"""In-process simulation: one shared frozen base model; a client is (its rows, the state it gets).

Each sampled client loads the global state into the shared model, trains with the shared loop and
hands back its state. Payloads go through the real wire format both ways, so the byte counts are
the serialized sizes and nothing but the method's tensors crosses the engine boundary.
"""

from __future__ import annotations

from typing import Any

from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import ENGINES
from fedcustom.core.types import State
from fedcustom.engines.base import Engine
from fedcustom.federation.rounds import ClientOutcome, Job, client_update, run_rounds


@ENGINES.register("simulation")
class SimulationEngine(Engine):
    def run(self, job: Job) -> State:
        def train_clients(server_round: int, down: bytes, cids: list[int],
                          client_config: dict[str, Any]) -> dict[int, ClientOutcome]:
            outcomes, state = {}, deserialize(down)  # what every client receives
            for cid in cids:
                try:
                    update, local = client_update(job, cid, state, server_round, client_config)
                except Exception as e:  # noqa: BLE001 - a failing client must not end the round
                    outcomes[cid] = ClientOutcome(error=repr(e), exception=e)
                    continue
                outcomes[cid] = ClientOutcome(serialize(update), local, len(job.clients[cid].rows))
            return outcomes

        return run_rounds(job, train_clients)
