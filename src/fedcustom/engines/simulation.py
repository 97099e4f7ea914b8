"""In-process simulation: one shared frozen base model; a client is (its rows, the state it gets).

Each sampled client loads the global state into the shared model, trains with the shared loop and
hands back its state. Payloads go through the real wire format both ways, so the byte counts are
the serialized sizes and nothing but the method's tensors crosses the engine boundary.
"""

from __future__ import annotations

from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import ENGINES
from fedcustom.core.types import Instructions, State
from fedcustom.engines.base import Engine
from fedcustom.federation.rounds import (
    Failure,
    Job,
    Reply,
    RoundReplies,
    client_update,
    fit_context,
    run_rounds,
)


@ENGINES.register("simulation")
class SimulationEngine(Engine):
    def run(self, job: Job) -> State:
        clients = job.clients

        def train_clients(server_round: int, down: bytes, cids: list[int],
                          instructions: Instructions) -> RoundReplies:
            replies, state = {}, deserialize(down)  # what every client receives
            for cid in cids:
                ctx = fit_context(clients.seed, server_round, cid, instructions)
                try:
                    update, local = client_update(clients, state, ctx)
                except Exception as e:  # noqa: BLE001 - a failing client must not end the round
                    replies[cid] = Reply(failure=Failure(repr(e), e))
                    continue
                replies[cid] = Reply(serialize(update), local, len(clients.rows[cid]))
            return RoundReplies(replies)

        return run_rounds(job, train_clients)
