"""In-process simulation: one shared frozen base model; a client is (its rows, the state it gets).

Each sampled client loads the global state into the shared model, trains with the shared loop and
hands back its state. Payloads go through the real wire format both ways, so the byte counts are
the serialized sizes and nothing but the method's tensors crosses the engine boundary.

With `workers` > 1 a round's clients train in that many forked processes that share the base
model's memory (engines/workers.py), with the same numbers as in one process; so do the local
mode's clients alone (`each_client`).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

from fedcustom.core.config import ExperimentConfig
from fedcustom.core.device import model_device
from fedcustom.core.log import logger
from fedcustom.core.payload import deserialize
from fedcustom.core.registry import ENGINES
from fedcustom.core.types import Instructions, State
from fedcustom.engines.base import Engine
from fedcustom.engines.workers import WorkerPool, cores, each_client, train_each
from fedcustom.federation.replies import Receive, RoundReplies
from fedcustom.federation.rounds import Clients, Job, run_rounds


@ENGINES.register("simulation")
class SimulationEngine(Engine):
    def __init__(self, workers: int = 1) -> None:
        self.workers = workers  # processes that train a round's clients; 1: this one

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> SimulationEngine:
        return cls(cfg.workers or cores())

    def run(self, job: Job) -> State:
        clients = job.clients
        size = self.pool_size(clients)
        if size > 1:
            with WorkerPool(clients, size) as pool:
                return run_rounds(job, pool.train_clients)

        def train_clients(server_round: int, down: bytes, cids: list[int], instructions: Instructions,
                          receive: Receive) -> RoundReplies:
            state = deserialize(down)  # what every client receives
            each = train_each(clients, server_round, state, cids, instructions)
            return RoundReplies({cid: receive(cid, reply) for cid, reply in each})  # as each is done

        return run_rounds(job, train_clients)

    def each_client(self, clients: Clients, cids: list[int],
                    fn: Callable[[int], Any]) -> Iterator[tuple[int, Any]]:
        """(cid, fn(cid)) for each client, as each finishes: in worker processes as a round's
        clients are (the local mode's clients alone), else one after another here."""
        size = self.pool_size(clients, len(cids))
        if size > 1:
            with WorkerPool(clients, size, each_client(fn)) as pool:
                yield from pool.map(cids, "local mode")
        else:
            for cid in cids:
                yield cid, fn(cid)

    def pool_size(self, clients: Clients, count: int | None = None) -> int:
        """Worker processes for `count` of this run's clients (default all): 1 (this process) where
        more cannot help (one client: the centralized baseline) or cannot give the same numbers."""
        size = min(self.workers, len(clients) if count is None else count)
        if size > 1 and clients.method.own_client_models:
            logger.warning(f"workers = {self.workers}: method '{clients.method.name}' keeps each client's "
                           "model between rounds; its clients train in this process")
            return 1
        if size > 1 and "fork" not in multiprocessing.get_all_start_methods():
            logger.warning(f"workers = {self.workers}: this system cannot fork processes; clients train "
                           "in this process")
            return 1
        if size > 1 and model_device(clients.model).type != "cpu":
            logger.warning(f"workers = {self.workers}: the model is on {model_device(clients.model)}; "
                           "workers are for the CPU, clients train in this process")
            return 1
        return size
