"""Flower's deployment engine: the same methods, strategies and round loop, with every client a
SuperNode that holds its own data.

`server_app` runs the whole experiment (data for evaluation, checkpoints, records, the strategy)
in the ServerApp process on the SuperLink's host; its federated mode uses `FlowerEngine`, which
reaches a round's clients through Flower's Grid. `client_app` runs on each SuperNode: it builds
the model from the experiment config the server sends, reads its own data (a file named in the
node config, or its partition of the configured dataset for trials on one machine) and does the
same `client_update` as an in-process client, so both engines give the same numbers.

Payloads travel as Flower ArrayRecords (the method's tensors, no pickle); the bytes recorded are
the same safetensors sizes as in simulation. A client that does not answer within
`flower.round_timeout` (a killed SuperNode) is recorded as missing and the round goes on without
it, unless fewer than `federation.min_clients` updates arrived.
"""

from __future__ import annotations

import json
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedcustom.config import ExperimentConfig, build
from fedcustom.engines.base import ENGINES, Client, ClientOutcome, Engine, Job, client_update, run_rounds
from fedcustom.errors import UserError
from fedcustom.methods.base import State
from fedcustom.payload import deserialize, serialize
from fedcustom.training import LocalResult

# Reply errors that mean "no answer from this node", as opposed to the client failing.
UNREACHABLE = {ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE}
NODE_CLIENT_ID, NODE_DATA_PATH = "client-id", "data-path"


def config_from_text(text: str) -> ExperimentConfig:
    import tomllib

    return build(ExperimentConfig, tomllib.loads(text))


# --- server side --------------------------------------------------------------------------------

@dataclass
class Deployment:
    """What the ServerApp hands the engine: Flower's grid and the config text clients rebuild from."""

    grid: Grid
    config_text: str
    label_names: list[str]


CURRENT: ContextVar[Deployment | None] = ContextVar("fedcustom_flower_deployment", default=None)


@ENGINES.register("flower")
class FlowerEngine(Engine):
    # SuperNodes rebuild their model every run: methods whose clients keep state between rounds
    # (distillation) or exchange no tensors are in-process only for now.
    exchanges = frozenset({"weights"})

    def __init__(self) -> None:
        deployment = CURRENT.get()
        if deployment is None:
            raise UserError("engine 'flower' runs inside a Flower ServerApp: start it with "
                            "`fedcustom run` (a local deployment) or `fedcustom flower submit`")
        self.deployment = deployment
        self.cfg = config_from_text(deployment.config_text)
        self.nodes: dict[int, int] = {}  # client id -> Flower node id

    def message(self, node: int, kind: str, config: dict[str, Any], arrays: State | None = None) -> Message:
        content = RecordDict({"config": ConfigRecord({
            "experiment": self.deployment.config_text,
            "label-names": json.dumps(self.deployment.label_names), **config})})
        if arrays is not None:
            content["arrays"] = ArrayRecord(arrays)
        return Message(content, dst_node_id=node, message_type=kind)

    def discover(self, num_clients: int, wait: float) -> None:
        """Map client ids to SuperNodes: ask every node not yet known which client it is."""
        grid, deadline = self.deployment.grid, time.monotonic() + wait
        while True:
            unknown = [n for n in grid.get_node_ids() if n not in self.nodes.values()]
            if unknown:
                for reply in grid.send_and_receive([self.message(n, "query", {}) for n in unknown],
                                                   timeout=min(60.0, self.cfg.flower.round_timeout)):
                    if reply.has_error():
                        continue
                    cid = int(reply.content["metrics"]["client-id"])
                    if not 0 <= cid < num_clients:
                        raise UserError(f"a SuperNode says it is client {cid}; this federation has "
                                        f"clients 0..{num_clients - 1} (partition.num_clients)")
                    if cid in self.nodes and self.nodes[cid] != reply.metadata.src_node_id:
                        raise UserError(f"two SuperNodes say they are client {cid}: give each its own "
                                        f"--client-id")
                    self.nodes[cid] = reply.metadata.src_node_id
            if len(self.nodes) == num_clients or time.monotonic() >= deadline:
                return
            time.sleep(0.5)

    def run(self, job: Job) -> State:
        self.discover(len(job.clients), self.cfg.flower.connect_timeout)
        print(f"flower: {len(self.nodes)} of {len(job.clients)} clients connected", flush=True)

        def train_clients(server_round: int, down: bytes, cids: list[int],
                          client_config: dict[str, Any]) -> dict[int, ClientOutcome]:
            if len(self.nodes) < len(job.clients):
                self.discover(len(job.clients), 0)  # a restarted SuperNode comes back here
            state = deserialize(down)
            outcomes = {cid: ClientOutcome(missing=True) for cid in cids}
            messages = [self.message(self.nodes[cid], "train",
                                     {"server-round": server_round, "client-id": cid, **client_config}, state)
                        for cid in cids if cid in self.nodes]
            by_node = {node: cid for cid, node in self.nodes.items()}
            replies = self.deployment.grid.send_and_receive(messages, timeout=self.cfg.flower.round_timeout)
            for reply in replies:
                cid = by_node[reply.metadata.src_node_id]
                if reply.has_error():
                    if reply.error.code not in UNREACHABLE:
                        outcomes[cid] = ClientOutcome(error=reply.error.reason)
                    continue
                metrics = reply.content["metrics"]
                local = LocalResult(float(metrics["loss"]), int(metrics["steps"]), int(metrics["examples"]),
                                    float(metrics["seconds"]), int(metrics["forward-passes"]))
                update = dict(reply.content["arrays"].to_torch_state_dict())
                outcomes[cid] = ClientOutcome(serialize(update), local, int(metrics["num-examples"]))
            return outcomes

        return run_rounds(job, train_clients)


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run config: `experiment` (the config TOML), `run-dir` (where results go on this host) and
    `resume` (go on from the checkpoints in run-dir)."""
    from fedcustom.data import load_task_data
    from fedcustom.experiment import execute

    run_dir, text = Path(str(context.run_config["run-dir"])), str(context.run_config["experiment"])
    resume = bool(context.run_config.get("resume", False)) and (run_dir / "config.toml").is_file()
    if resume:
        text = (run_dir / "config.toml").read_text()  # a run goes on with its saved config
    cfg = config_from_text(text)
    labels = load_task_data(cfg.data).label_names
    token = CURRENT.set(Deployment(grid, text, labels))
    try:
        execute(cfg, run_dir if resume else None, lambda *a: print(*a, flush=True), None,
                into=None if resume else run_dir)
    finally:
        CURRENT.reset(token)


# --- client side --------------------------------------------------------------------------------

@cache
def client_job(config_text: str, label_names_json: str, cid: int, data_path: str) -> Job:
    """The client's side of the experiment, built once per SuperNode process and config: the
    prepared model, the training data and this client's rows. With a data path, the client trains
    on every row of its own file; otherwise on its partition of the configured dataset, exactly
    the rows the in-process engine gives client `cid`."""
    from fedcustom.attacks import Attack
    from fedcustom.data import load_task_data, partition_indices
    from fedcustom.data.batching import encode
    from fedcustom.data.datasets import load_user_data
    from fedcustom.faults import Faults
    from fedcustom.methods import METHODS
    from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions

    cfg = config_from_text(config_text)
    label_names = json.loads(label_names_json)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    model, tokenizer = method.build_model(cfg.model, len(label_names), cfg.seed)
    method.prepare(model)
    rows_by_client = [np.array([], dtype=np.int64)] * cfg.partition.num_clients
    if data_path:
        table = load_user_data(Path(data_path), cfg.data.text_column, cfg.data.label_column)
        unknown = sorted(set(table.label_names) - set(label_names))
        if unknown:
            raise UserError(f"{data_path}: labels {unknown} are not among the federation's {label_names}")
        labels = [label_names.index(table.label_names[i]) for i in table.labels]
        data = encode(table.texts, labels, tokenizer, cfg.model.max_length)
        rows_by_client[cid] = np.arange(len(labels))
    else:
        train = load_task_data(cfg.data).train
        rows_by_client = partition_indices(train, cfg.partition, cfg.seed)
        data = encode(train["text"], train["label"], tokenizer, cfg.model.max_length)
    clients = [Client(i, rows) for i, rows in enumerate(rows_by_client)]
    attack = Attack.from_config(cfg.attack, len(clients), len(label_names), cfg.seed)
    faults = Faults(cfg.faults, len(clients), len(label_names), cfg.seed)
    return Job(model, method, FedAvg(FedAvgOptions()), clients, data, cfg.train, cfg.federation.rounds,
               cfg.federation.fraction_fit, cfg.seed, lambda _m: {}, lambda _r, _s: None,
               attack=attack, faults=faults)


def node_job(msg: Message, context: Context) -> tuple[Job, int]:
    config = msg.content["config"]
    if NODE_CLIENT_ID not in context.node_config:
        raise UserError(f"this SuperNode has no '{NODE_CLIENT_ID}' in its node config")
    cid = int(context.node_config[NODE_CLIENT_ID])
    data_path = str(context.node_config.get(NODE_DATA_PATH, ""))
    return client_job(str(config["experiment"]), str(config["label-names"]), cid, data_path), cid


client_app = ClientApp()


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    job, cid = node_job(msg, context)
    metrics = MetricRecord({"client-id": cid, "num-examples": len(job.clients[cid].rows)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    job, cid = node_job(msg, context)
    config = dict(msg.content["config"])
    server_round = int(config.pop("server-round"))
    for key in ("experiment", "label-names", "client-id"):
        config.pop(key)
    state = dict(msg.content["arrays"].to_torch_state_dict())
    update, local = client_update(job, cid, state, server_round, config)
    metrics = MetricRecord({"num-examples": len(job.clients[cid].rows), "loss": local.loss,
                            "steps": local.steps, "examples": local.examples, "seconds": local.seconds,
                            "forward-passes": local.forward_passes})
    return Message(RecordDict({"arrays": ArrayRecord(update), "metrics": metrics}), reply_to=msg)
