"""A client site's training message on the Flower engines (the handler of fedcustom.apps.clientapp).

A site builds its clients from the experiment config the server sends: the model, its own data
(a file named in its node config, or its partition of the configured dataset for trials on one
machine). It keeps them while its process lives: fedcustom's executor (executor.py) serves all of a
SuperNode's messages in one process, as a Ray actor does in Flower's simulation; with Flower's
`--isolation subprocess` every message is a fresh process that builds them again. Each message
loads the global state it carries into the kept model and does the same `client_update` as an
in-process client (which also shares one model between rounds and clients: the state, a fresh
optimizer and the (seed, round, client) seeds are all a round depends on). In a secure round
(SecAgg+), Flower's mod masks the delta it returns.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import fields, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedcustom.core.config import DataConfig, ExperimentConfig, build
from fedcustom.core.device import check_quantization, resolve_device
from fedcustom.core.errors import UserError
from fedcustom.core.log import logger
from fedcustom.core.registry import METHODS
from fedcustom.core.types import Instructions
from fedcustom.data import load_task_data, partition_indices
from fedcustom.data.datasets import TaskData, load_table, to_dataset
from fedcustom.data.files import Table
from fedcustom.engines.flower.node import NODE_DATA_PATH, node_client_id
from fedcustom.engines.flower.secagg import (
    is_secure_fit,
    read_secure_config,
    read_secure_state,
    secure_fit_reply,
)
from fedcustom.federation.attacks import Attack
from fedcustom.federation.faults import Faults
from fedcustom.federation.rounds import Clients, client_update, fit_context
from fedcustom.tasks import task_for


def config_from_text(text: str) -> ExperimentConfig:
    return build(ExperimentConfig, tomllib.loads(text))


# A long-lived client process (fedcustom's executor, a Ray actor) keeps the clients of one run and
# config: a new run or config replaces them, so memory does not grow with messages or runs.
@lru_cache(maxsize=1)
def site_clients(config_text: str, label_names_json: str, data_path: str, cid: int,
                 run_id: int = 0) -> Clients:
    """The client's side of the experiment, built once per client process, run and config: the
    prepared model, the training data and the clients' rows. With a data path, client `cid` trains
    on every row of its own file; otherwise every client has its partition of the configured
    dataset, exactly the rows the in-process engine gives it (pass cid = -1: it serves all).
    `run_id` is only part of the key: a new run starts from a freshly built model and data."""
    start = time.perf_counter()
    cfg = config_from_text(config_text)
    label_names = json.loads(label_names_json)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    if data_path:
        data = site_data(replace(cfg.data, dataset=data_path), label_names)
        rows_by_client = [np.array([], dtype=np.int64)] * cfg.partition.num_clients
        rows_by_client[cid] = np.arange(len(data.train))
    else:
        data = load_task_data(cfg.data)
        rows_by_client = partition_indices(data.train, cfg.partition, cfg.seed)
    task = task_for(cfg, method, data)
    device = resolve_device(cfg.device)  # a site's own GPU, if it has one (`device = "auto"`)
    check_quantization(device, cfg.model.quantization)
    model, tokenizer = task.build_model(method, cfg, data)
    method.prepare(model)
    model.to(device)
    n = len(rows_by_client)
    train = task.encode(data.train, tokenizer, cfg)
    logger.info(f"site: built the clients of run {run_id} ({cfg.model.name}, {len(data.train)} rows) in "
                f"{time.perf_counter() - start:.1f} s")
    return Clients(model, method, train, rows_by_client, cfg.train, cfg.seed,
                   attack=Attack.from_config(cfg.attack, n, len(label_names), cfg.seed),
                   faults=Faults(cfg.faults, n, len(label_names), cfg.seed))


def site_data(cfg: DataConfig, label_names: list[str]) -> TaskData:
    """A site's own file, every row for training, its labels numbered as the federation's are."""

    table = load_table(cfg)
    if table.targets is None:  # class labels: the site's names must be the federation's
        unknown = sorted(set(table.label_names) - set(label_names))
        if unknown:
            raise UserError(f"{cfg.dataset}: labels {unknown} are not among the federation's {label_names}")
        labels = np.array([label_names.index(table.label_names[i]) for i in table.labels], dtype=np.int64)
        table = Table(table.texts, labels, label_names, None)
    train = to_dataset(table, np.arange(len(table.texts)))
    return TaskData(cfg.dataset, train, train, None, label_names)


def node_clients(config: dict[str, Any], context: Context) -> tuple[Clients, int]:
    cid = node_client_id(context)
    data_path = str(context.node_config.get(NODE_DATA_PATH, ""))
    text, labels = str(config["experiment"]), str(config["label-names"])
    return site_clients(text, labels, data_path, cid if data_path else -1, context.run_id), cid


def train(msg: Message, context: Context) -> Message:
    """One client's round on a SuperNode (fedcustom.apps.clientapp's train handler)."""
    secure = is_secure_fit(msg)
    config = read_secure_config(msg) if secure else dict(msg.content["config"])
    clients, cid = node_clients(config, context)
    server_round = int(config.pop("server-round"))
    instructions = Instructions(**{f.name: config[f.name] for f in fields(Instructions)})
    if secure:
        state = read_secure_state(msg, clients.method.get_state(clients.model))
    else:
        state = dict(msg.content["arrays"].to_torch_state_dict())
    ctx = fit_context(clients.seed, server_round, cid, instructions)
    update, local = client_update(clients, state, ctx)
    examples = len(clients.rows[cid])
    metrics = {"num-examples": examples, "loss": local.loss, "steps": local.steps,
               "examples": local.examples, "seconds": local.seconds, "forward-passes": local.forward_passes,
               "backward-passes": local.backward_passes}
    if secure:  # the SecAgg+ mod masks the delta before it leaves
        delta = {k: update[k] - state[k] for k in state}
        # under client-side DP every client weighs the same: the noise is sized for a uniform mean
        weight = 1 if instructions.dp_clip_norm > 0 else examples
        return secure_fit_reply(msg, delta, weight, metrics)
    content = RecordDict({"arrays": ArrayRecord(update), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)
