"""Peer: fedcustom's in-process engine against Flower's simulation engine (Ray), same work.

No Flower engine is registered in fedcustom yet, so the Flower side is a minimal ServerApp +
ClientApp written here on Flower's Message API (`flwr.simulation.run_simulation`): Flower's own
FedAvg strategy, its ArrayRecord payloads and Ray actors, with the client's work done by the same
fedcustom Method and training loop on the same clients' rows, with the same per-client seeds.
The server evaluates the global model on the same test set after every round (evaluate_fn),
as fedcustom's engine does. Each Ray actor builds the model and tokenizes the data once and keeps
them between rounds (what a careful Flower user does). Ray gets 1 CPU, so one actor trains at a
time, as fedcustom's single process does: both sides use one torch thread for training.

Each side runs in a fresh process; peak memory is the peak PSS summed over that process and every
process it starts (Ray's raylet, GCS, workers), sampled every 0.25 s. `round_span_s` runs from
the end of the initial evaluation to the end of the last round (`round_s`: each round), and
Flower's first round includes each actor's one-time model build and tokenization (fedcustom does
that before round 0), so `later_round_s` (median of rounds 2..R) compares the steady state;
`wall_s` is the whole process, startup included, and `tree_cpu_s` the CPU time of its
process tree (startup included), the figure least disturbed by other jobs on the machine.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from functools import cache
from typing import Any

from benchmarks.common import (
    Mark,
    Options,
    experiment_config,
    median,
    one_thread,
    print_ratios,
    run_point,
    write_result,
)


def config_for(spec: dict[str, Any]) -> Any:
    opts = Options(model=spec["model"], overrides=spec["overrides"])
    n, per_client = spec["clients"], spec["examples_per_client"]
    return experiment_config(opts, [
        "modes=['federated']", "method.name=prefix", "partition.scheme=iid", f"partition.num_clients={n}",
        f"data.max_train_examples={n * per_client}", "data.max_test_examples=64",
        f"federation.rounds={spec['rounds']}", "federation.max_norm_factor=0",
    ])


@cache
def world(spec_json: str) -> tuple[Any, Any, Any, Any, Any, list[Any]]:
    """(config, method, model, train, test, client rows), built once per process."""
    import json

    from fedcustom.core.registry import METHODS
    from fedcustom.data import load_task_data, partition_indices
    from fedcustom.data.batching import encode_split

    one_thread()
    cfg = config_for(json.loads(spec_json))
    data = load_task_data(cfg.data)
    parts = partition_indices(data.train, cfg.partition, cfg.seed)
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    model, tokenizer = method.build_model(cfg.model, len(data.label_names), cfg.seed)
    method.prepare(model)
    train = encode_split(data.train, tokenizer, cfg.model.max_length)
    test = encode_split(data.test, tokenizer, cfg.model.max_length)
    return cfg, method, model, train, test, parts


def flower_apps(spec_json: str, marks: list[Mark]) -> tuple[Any, Any]:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedcustom.core.types import FitContext
    from fedcustom.federation.rounds import client_seed

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg, method, model, data, _, parts = world(spec_json)
        cid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        method.set_state(model, dict(msg.content["arrays"].to_torch_state_dict()))
        ctx = FitContext(cid, server_round, client_seed(cfg.seed, server_round, cid))
        local = method.fit(model, data, parts[cid], cfg.train, ctx)
        reply = RecordDict({"arrays": ArrayRecord(method.get_state(model)),
                            "metrics": MetricRecord({"num-examples": len(parts[cid]), "loss": local.loss})})
        return Message(reply, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg, method, model, _, test, parts = world(spec_json)

        def evaluate(_round: int, arrays: ArrayRecord) -> MetricRecord:
            method.set_state(model, dict(arrays.to_torch_state_dict()))
            metrics = method.evaluate(model, test, cfg.train.eval_batch_size)
            marks.append(Mark.now())
            return MetricRecord(metrics)

        strategy = FedAvg(fraction_train=cfg.federation.fraction_fit, fraction_evaluate=0.0,
                          min_train_nodes=1, min_available_nodes=len(parts))
        strategy.start(grid, ArrayRecord(method.get_state(model)), num_rounds=cfg.federation.rounds,
                       train_config=ConfigRecord({"lr": cfg.train.lr}), evaluate_fn=evaluate)

    return server_app, client_app


def point(spec: dict[str, Any]) -> dict[str, Any]:
    """One side of the comparison in its own process: `python -m benchmarks _point peer SPEC`."""
    import json

    one_thread()
    start = time.perf_counter()
    marks: list[Mark] = []
    if spec["side"] == "flower":
        import logging

        from flwr.simulation import run_simulation

        logging.getLogger("flwr").setLevel(logging.WARNING)
        server_app, client_app = flower_apps(json.dumps(spec["run"], sort_keys=True), marks)
        run_simulation(server_app, client_app, num_supernodes=spec["run"]["clients"],
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": 1}})
    else:
        from fedcustom.runs.experiment import run_experiment

        with tempfile.TemporaryDirectory() as tmp:
            cfg = dataclasses.replace(config_for(spec["run"]), output_dir=tmp)
            run_experiment(cfg, log=lambda *_: None, on_record=lambda *_: marks.append(Mark.now()))
    if len(marks) != spec["run"]["rounds"] + 1:
        expected = spec["run"]["rounds"] + 1
        raise RuntimeError(f"{spec['side']}: expected {expected} evaluations, got {len(marks)}")
    per_round = [(b - a).wall for a, b in zip(marks, marks[1:], strict=False)]
    return {"side": spec["side"], "round_span_s": (marks[-1] - marks[0]).wall, "round_s": per_round,
            # rounds after the first: Flower's actors build their model and data during round 1
            "later_round_s": median(per_round[1:]) if len(per_round) > 1 else per_round[0],
            "wall_s": time.perf_counter() - start}


def run(opts: Options) -> dict[str, float]:
    one_thread()
    clients, rounds, per_client = (2, 2, 8) if opts.quick else (4, 3, 32)
    repeats = opts.repeats or (1 if opts.quick else 2)
    run_spec = {"model": opts.model, "overrides": opts.overrides, "clients": clients, "rounds": rounds,
                "examples_per_client": per_client}
    runs: dict[str, list[dict[str, Any]]] = {"fedcustom": [], "flower": []}
    for i in range(repeats):  # interleaved, alternating who goes first
        for side in ("fedcustom", "flower") if i % 2 == 0 else ("flower", "fedcustom"):
            runs[side].append(run_point("peer", {"side": side, "run": run_spec}))
        print(f"peer: repeat {i + 1}/{repeats}: " + ", ".join(
            f"{s} rounds {r[-1]['round_span_s']:.1f} s, wall {r[-1]['wall_s']:.1f} s, "
            f"CPU {r[-1]['tree_cpu_s']:.1f} s, peak {r[-1]['tree_peak_pss_mb']:.0f} MB"
            for s, r in runs.items()))

    def med(side: str, key: str) -> float:
        return median([r[key] for r in runs[side]])

    def flower_over_fedcustom(key: str) -> float:
        return med("flower", key) / med("fedcustom", key)

    ratios = {
        "flower_over_fedcustom_round_time": flower_over_fedcustom("round_span_s"),
        "flower_over_fedcustom_later_rounds": flower_over_fedcustom("later_round_s"),
        "flower_over_fedcustom_wall_time": flower_over_fedcustom("wall_s"),
        "flower_over_fedcustom_tree_cpu_time": flower_over_fedcustom("tree_cpu_s"),
        "flower_over_fedcustom_peak_memory": flower_over_fedcustom("tree_peak_pss_mb"),
    }
    settings = {"model": opts.model, "method": "prefix", "strategy": "fedavg (each framework's own)",
                "clients": clients, "rounds": rounds, "examples_per_client": per_client, "repeats": repeats,
                "threads": 1, "ray_cpus": 1, "test_examples": 64}
    path = write_result(opts, "peer", settings, runs, ratios, __doc__.split("\n\n", 1)[1].strip())
    print_ratios("peer", ratios)
    print(f"peer: -> {path}")
    return ratios
