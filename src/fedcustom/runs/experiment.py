"""One experiment end to end: data -> partition -> model -> method -> engine, for each mode.

`federated` runs the configured strategy over the partitioned clients. `centralized` is the
baseline: the same method, loop and engine with ONE client holding all training data, for the
same rounds x local epochs (its single update is taken as is, so it is plain training).

Every round is checkpointed in the run folder; `resume_experiment` continues a killed run there
(finished modes are kept, a half-finished one goes on after its last checkpoint) and gives the
same numbers and final state as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcustom.core.config import ExperimentConfig, dumps, load_config
from fedcustom.core.device import (
    autocast,
    check_precision,
    check_quantization,
    machine_info,
    reset_peak_rss,
    resolve_device,
    resolve_precision,
)
from fedcustom.core.errors import UserError
from fedcustom.core.io import atomic_write, check_writable, folder_lock, new_run_dir, storage_full_stops
from fedcustom.core.log import info
from fedcustom.core.registry import ENGINES, METHODS, STRATEGIES
from fedcustom.core.types import State, is_owned_key
from fedcustom.data import TaskData, load_task_data, partition_indices, partition_table
from fedcustom.engines.simulation import SimulationEngine
from fedcustom.federation.attacks import Attack
from fedcustom.federation.faults import Faults
from fedcustom.federation.local import local_records, local_sample, train_alone
from fedcustom.federation.rounds import Clients, Job, new_best
from fedcustom.runs.results import RunWriter
from fedcustom.runs.summary import headline_metric, side_by_side
from fedcustom.runs.tracking import Tracker
from fedcustom.runs.tracking import check as check_tracking
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions
from fedcustom.tasks import task_for

LABELS = "labels.json"
MACHINE = "machine.json"  # one entry per start and resume: where the run's times were measured
RecordHook = Callable[[str, dict[str, Any]], None]  # (mode, record), once the record is saved


@dataclass
class ModeResult:
    mode: str
    path: Path
    records: list[dict[str, Any]]


def run_experiment(cfg: ExperimentConfig, log: Any = info, on_record: RecordHook | None = None,
                   into: Path | None = None, data: TaskData | None = None) -> dict[str, ModeResult]:
    """Run every mode of `cfg` in a new run folder: OUTPUT_DIR/NAME-TIME, or exactly `into`.
    `data`: already loaded splits (in-memory data, data/memory.py) instead of cfg.data's."""
    return execute(cfg, None, log, on_record, into, data)


def resume_experiment(run_dir: str | Path, log: Any = info,
                      on_record: RecordHook | None = None) -> dict[str, ModeResult]:
    """Finish the run in `run_dir` with the config saved there."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise UserError(f"--resume {run_dir}: not a fedcustom run folder (expected {run_dir}/config.toml)")
    return execute(load_config(run_dir / "config.toml"), run_dir, log, on_record)


def execute(cfg: ExperimentConfig, resume_dir: Path | None, log: Any,
            on_record: RecordHook | None, into: Path | None = None,
            data: TaskData | None = None) -> dict[str, ModeResult]:
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    reset_peak_rss()  # the records' peak_rss_mb is this run's, not an earlier one's in this process
    check_writable(resume_dir or into or Path(cfg.output_dir))  # before anything loads
    device = resolve_device(cfg.device)  # a missing GPU fails here, before anything loads
    check_precision(device, cfg.train.precision)
    check_quantization(device, cfg.model.quantization)  # bitsandbytes' backend for that device
    check_tracking(cfg)  # a tracker's missing package, named in one line
    data = data if data is not None else load_task_data(cfg.data)
    parts = partition_indices(data.train, cfg.partition, cfg.seed)  # fails early on a bad split
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    task = task_for(cfg, method, data)
    model, tokenizer = task.build_model(method, cfg, data)
    # Inputs are all checked (config, data, partition, model): only now is anything written.
    if into is not None:
        into.mkdir(parents=True, exist_ok=True)
    run_dir = resume_dir or into or new_run_dir(cfg.output_dir, cfg.name)
    # one process writes a run folder at a time; a full disk stops the run after its last
    # checkpoint, which atomic writes keep whole
    full = (f"the last checkpoint in {run_dir} is intact: free some space, then `fedcustom run "
            f"--resume {run_dir}` goes on")
    with folder_lock(run_dir), storage_full_stops(full):
        if resume_dir is None:
            atomic_write(run_dir / "config.toml", dumps(cfg))
        table = partition_table(data.train, parts, data.label_names)
        atomic_write(run_dir / "partition.txt", table + "\n")
        # what a model loaded from this folder needs of the data (runs/trained.py), even when the
        # data is gone (in-memory data) or slow to read again
        atomic_write(run_dir / LABELS, json.dumps({"task": data.kind, "labels": data.label_names}) + "\n")
        log(f"run folder: {run_dir}\n{data.name}: {len(data.train)} train / {len(data.test)} test "
            f"examples, labels {data.label_names}\n{table}")

        method.prepare(model)
        model.to(device)  # once; batches follow it, states come back to the CPU (see core/device.py)
        initial = method.get_state(model)  # every mode starts from this initialization
        n_params = sum(v.numel() for k, v in initial.items() if not is_owned_key(k))  # masks: bookkeeping
        record_machine(run_dir / MACHINE, device, cfg.train.precision, resumed=resume_dir is not None)
        log(f"method {method.name}: {n_params:,} trainable parameters; {device.type}, "
            f"{resolve_precision(device, cfg.train.precision)} (train.precision = {cfg.train.precision})")

        train = task.encode(data.train, tokenizer, cfg)
        held_out = {"test": task.encode(data.test, tokenizer, cfg)}
        if data.validation is not None:
            held_out["val"] = task.encode(data.validation, tokenizer, cfg)

        def evaluate(m: torch.nn.Module) -> dict[str, Any]:
            out = {}
            for split, enc in held_out.items():
                with autocast(device, cfg.train.precision):
                    metrics = method.evaluate(m, enc, cfg.train.eval_batch_size)
                out.update({f"{split}_{k}": v for k, v in metrics.items()})
            return out

        def run_local() -> ModeResult:
            """Every client alone (federation/local.py); each finished client is saved, so a resumed
            run goes on with the next one. rounds.jsonl is written once all clients are done."""
            path = run_dir / "local"
            path.mkdir(parents=True, exist_ok=True)
            saved = path / "clients.json"
            per_client = {int(c): {int(r): m for r, m in rounds.items()}
                          for c, rounds in json.loads(saved.read_text()).items()} if saved.is_file() else {}
            clients = Clients(model, method, train, list(parts), cfg.train, cfg.seed)
            rounds = cfg.federation.rounds
            method.set_state(model, initial)
            start_metrics = evaluate(model)
            todo = [c for c in local_sample(len(parts), cfg.federation.local_clients, cfg.seed)
                    if c not in per_client]
            # the baseline's end point: each client is evaluated after its last round only; with
            # workers, clients train in that many processes (each on one thread)
            alone = partial(train_alone, clients, initial=initial, rounds=rounds,
                            evaluates=lambda r: r == rounds, evaluate=evaluate)
            for cid, metrics in SimulationEngine.from_config(cfg).each_client(clients, todo, alone):
                per_client[cid] = metrics
                atomic_write(saved, json.dumps(per_client))
                log(f"local: client {cid} done")
            writer = RunWriter(path)
            writer.records = local_records(per_client, {c: len(rows) for c, rows in enumerate(parts)},
                                           start_metrics)
            writer.write_records()
            for record in writer.records:
                tracker.log("local", record)
                if on_record is not None:
                    on_record("local", record)
            return ModeResult("local", path, writer.records)

        def run_mode(mode: str) -> ModeResult:
            if mode == "local":
                return run_local()
            # The centralized baseline holds all training data in one place: it never federates, so it
            # runs in process whatever engine the federated mode uses.
            engine = ENGINES.get(cfg.engine if mode == "federated" else "simulation").from_config(cfg)
            if mode == "federated":
                n, labels = len(parts), len(data.label_names)
                clients = Clients(model, method, train, list(parts), cfg.train, cfg.seed,
                                  Attack.from_config(cfg.attack, n, labels, cfg.seed),
                                  Faults(cfg.faults, n, labels, cfg.seed))
                strategy = STRATEGIES.get(cfg.strategy.name)(cfg.strategy.options)
                fraction = cfg.federation.fraction_fit
            else:
                own = replace(cfg.train, lr=cfg.train.centralized_lr or cfg.train.lr)
                clients = Clients(model, method, train, [np.arange(len(train))], own, cfg.seed)
                strategy, fraction = FedAvg(FedAvgOptions()), 1.0
            writer = RunWriter(run_dir / mode)
            start, state = 0, initial
            ckpt = writer.load_checkpoint()
            if ckpt is not None:
                start, state = ckpt.round, ckpt.state
                strategy.load_state_dict(ckpt.strategy_state)
                if cfg.federation.save_best and new_best(writer.records) and writer.best_round() != start:
                    # killed between the checkpoint of a best round and its export: export it now
                    writer.save_best(method, model, writer.records[-1], state, adopted=False)
                log(f"{mode}: resuming after round {start} of {cfg.federation.rounds}")
                for record in writer.records:  # the trackers skip (MLflow) or rewrite (TensorBoard) these
                    tracker.log(mode, record)

            def on_round(record: dict[str, Any], new_state: State) -> None:
                writer.add_round(record, new_state, strategy.state_dict())
                every = cfg.federation.save_every
                if every and record["round"] and record["round"] % every == 0:
                    writer.save_snapshot(method, model, record["round"])
                if cfg.federation.save_best and new_best(writer.records):
                    writer.save_best(method, model, record, new_state)
                tracker.log(mode, record)
                if on_record is not None:
                    on_record(mode, record)

            job = Job(clients, strategy, cfg.federation.rounds, fraction, evaluate, on_round, label=mode,
                      start_round=start, initial_state=state, max_norm_factor=cfg.federation.max_norm_factor,
                      min_clients=cfg.federation.min_clients if mode == "federated" else 0,
                      update_memory_mb=cfg.federation.update_memory_mb,
                      eval_every=cfg.federation.eval_every if mode == "federated" else 1,
                      patience=cfg.federation.centralized_patience if mode == "centralized" else 0,
                      history=list(ckpt.records) if ckpt is not None else [])
            final = engine.run(job)
            writer.save_final(method, model, final)
            return ModeResult(mode, writer.path, writer.records)

        tracker = Tracker(cfg, run_dir)  # [tracking]: TensorBoard, MLflow (never stops the run)
        try:
            results = {mode: run_mode(mode) for mode in cfg.modes}
            summary = side_by_side({m: r.records for m, r in results.items()}, headline_metric(data.kind))
            atomic_write(run_dir / "summary.txt", summary + "\n")
        except BaseException as e:
            tracker.close("FAILED" if isinstance(e, Exception) else "KILLED")
            raise
        tracker.close()  # FINISHED: the run folder's files become artifacts
        log(f"\n{summary}\n\nresults: {run_dir}")
        return results


def record_machine(path: Path, device: torch.device, precision: str, resumed: bool) -> None:
    """Append this start's machine to the run's machine.json: `precision = "auto"` is bf16 on one CPU
    and fp32 on another (the demo: 2.4x slower), so a run's times need the machine beside them."""
    starts = json.loads(path.read_text()) if resumed and path.is_file() else []
    starts.append({"started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   **machine_info(device, precision)})
    atomic_write(path, json.dumps(starts, indent=1) + "\n")
