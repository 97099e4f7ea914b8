"""One experiment end to end: data -> partition -> model -> method -> engine, for each mode.

`federated` runs the configured strategy over the partitioned clients. `centralized` is the
baseline: the same method, loop and engine with ONE client holding all training data, for the
same rounds x local epochs (its single update is taken as is, so it is plain training).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcustom.config import ExperimentConfig, dumps
from fedcustom.data import load_task_data, partition_indices, partition_table
from fedcustom.data.batching import Encoded, encode
from fedcustom.engines import ENGINES, Client, Job
from fedcustom.evaluation import evaluate_classifier
from fedcustom.methods import METHODS
from fedcustom.models import build_classifier
from fedcustom.report import side_by_side
from fedcustom.results import RunWriter, atomic_write, new_run_dir
from fedcustom.strategies import STRATEGIES
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions


@dataclass
class ModeResult:
    mode: str
    path: Path
    records: list[dict[str, Any]]


def encode_split(split: Any, tokenizer: Any, max_length: int) -> Encoded:
    return encode(split["text"], split["label"], tokenizer, max_length)


def run_experiment(cfg: ExperimentConfig, log: Any = print) -> dict[str, ModeResult]:
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    data = load_task_data(cfg.data)
    parts = partition_indices(data.train, cfg.partition, cfg.seed)  # fails early on a bad split
    model, tokenizer = build_classifier(cfg.model, len(data.label_names), cfg.seed)
    # Inputs are all checked (config, data, partition, model): only now is anything written.
    run_dir = new_run_dir(cfg.output_dir, cfg.name)
    atomic_write(run_dir / "config.toml", dumps(cfg))
    table = partition_table(data.train, parts, data.label_names)
    atomic_write(run_dir / "partition.txt", table + "\n")
    log(f"run folder: {run_dir}\n{data.name}: {len(data.train)} train / {len(data.test)} test "
        f"examples, labels {data.label_names}\n{table}")

    method = METHODS.get(cfg.method.name)(cfg.method.options)
    method.prepare(model)
    initial = method.get_state(model)
    n_params = sum(v.numel() for v in initial.values())
    log(f"method {method.name}: {n_params:,} trainable parameters")

    train = encode_split(data.train, tokenizer, cfg.model.max_length)
    held_out = {"test": encode_split(data.test, tokenizer, cfg.model.max_length)}
    if data.validation is not None:
        held_out["val"] = encode_split(data.validation, tokenizer, cfg.model.max_length)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        out = {}
        for split, enc in held_out.items():
            metrics = evaluate_classifier(m, enc, cfg.train.eval_batch_size)
            out.update({f"{split}_{k}": v for k, v in metrics.items()})
        return out

    engine = ENGINES.get(cfg.engine)()
    results = {}
    for mode in cfg.modes:
        method.set_state(model, initial)  # every mode starts from the same initialization
        if mode == "federated":
            clients = [Client(i, rows) for i, rows in enumerate(parts)]
            strategy = STRATEGIES.get(cfg.strategy.name)(cfg.strategy.options)
            fraction = cfg.federation.fraction_fit
        else:
            clients = [Client(0, np.arange(len(train)))]
            strategy, fraction = FedAvg(FedAvgOptions()), 1.0
        writer = RunWriter(run_dir / mode)
        job = Job(model, method, strategy, clients, train, cfg.train, cfg.federation.rounds,
                  fraction, cfg.seed, evaluate, writer.add_record, label=mode)
        final = engine.run(job)
        writer.save_final(method, model, final)
        results[mode] = ModeResult(mode, writer.path, writer.records)
    summary = side_by_side({m: r.records for m, r in results.items()})
    atomic_write(run_dir / "summary.txt", summary + "\n")
    log(f"\n{summary}\n\nresults: {run_dir}")
    return results
