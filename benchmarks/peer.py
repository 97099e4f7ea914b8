"""Peer: fedcustom's in-process engine against its engine on Flower's simulation runtime, same config.

Sides: engine `simulation` (fedcustom's in-process engine) and engine `flower-simulation`
(Flower's `run_simulation` on Ray: fedcustom's ServerApp runs the same round loop, strategy,
screening, evaluation, records and checkpoints, and every client is a virtual SuperNode whose
ClientApp runs on a Ray actor that keeps the built model between messages; Ray gets 1 CPU, so
one actor trains at a time on one torch thread, as the in-process engine does). Both are started
as a user starts a run (`fedcustom.run`: the engine's own launcher, else `run_experiment`) with
the same config: prefix-tuning, the same clients' rows and seeds, FedAvg, evaluation on the same
64 test examples after every round, so both train the same batches.

Workloads: `compute` (10 clients x 100 examples: the clients' training dominates a round) and
`overhead` (100 clients x 8 examples: one small batch per client, so the per-client messaging
and bookkeeping weigh most).

Each side runs in a fresh process. Steady state, the headline: the median of `round_seconds`
over rounds 2..R of the run's records (rounds.jsonl: the server's round, from sending the state
to the end of the evaluation); Flower's round 1 also includes the actor's one-time model build
and tokenization (`first_round_extra_s`: round 1 less the steady state). Setup: the process's
whole wall time less rounds 1..R (Python start, imports, data, model build, Ray's start, the
initial evaluation, shutdown). Peak memory is the peak PSS summed over the process and every
process it starts (Ray's raylet, GCS, workers) and CPU time is summed over that tree, sampled
every 0.25 s. Ratios: flower-simulation / simulation, of the medians over repeats (sides run
back to back, alternating which goes first).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

from benchmarks.common import (
    Options,
    experiment_config,
    median,
    one_thread,
    print_ratios,
    run_point,
    write_result,
)

ENGINES = ("simulation", "flower-simulation")
# workload -> (clients, examples per client)
WORKLOADS = {"compute": (10, 100), "overhead": (100, 8)}
QUICK_WORKLOADS = {"compute": (2, 16), "overhead": (6, 2)}
TEST_EXAMPLES = 64


def config_for(spec: dict[str, Any]) -> Any:
    opts = Options(model=spec["model"], overrides=spec["overrides"])
    n, per_client = spec["clients"], spec["examples_per_client"]
    return experiment_config(opts, [
        f"engine={spec['engine']!r}", "modes=['federated']", "method.name=prefix", "partition.scheme=iid",
        f"partition.num_clients={n}", f"data.max_train_examples={n * per_client}",
        f"data.max_test_examples={TEST_EXAMPLES}", f"federation.rounds={spec['rounds']}",
    ])


def point(spec: dict[str, Any]) -> dict[str, Any]:
    """One side of one workload in its own process: `python -m benchmarks _point peer SPEC`."""
    import logging

    from fedcustom.runs.api import run

    one_thread()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(dataclasses.replace(config_for(spec), output_dir=tmp))
        records = result.records["federated"]
    rounds = [r for r in records if r["round"] >= 1]
    if len(rounds) != spec["rounds"]:
        raise RuntimeError(f"{spec['engine']}: expected {spec['rounds']} rounds, "
                           f"the records have {len(rounds)}")
    return {"engine": spec["engine"], "round_s": [r["round_seconds"] for r in rounds],
            "test_accuracy": [r.get("test_accuracy") for r in records],
            "train_loss": [r["train_loss"] for r in rounds]}


def summarize(result: dict[str, Any], process_wall: float) -> dict[str, Any]:
    """Setup, first round and steady state of one run (see the module's docstring)."""
    rounds = result["round_s"]
    steady = median(rounds[1:]) if len(rounds) > 1 else rounds[0]
    return {**result, "process_wall_s": process_wall, "steady_round_s": steady,
            "first_round_extra_s": rounds[0] - steady, "setup_s": process_wall - sum(rounds)}


def run(opts: Options) -> dict[str, float]:
    one_thread()
    workloads = QUICK_WORKLOADS if opts.quick else WORKLOADS
    rounds = 2 if opts.quick else 3
    repeats = opts.repeats or (1 if opts.quick else 3)
    results: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    for workload, (clients, per_client) in workloads.items():
        spec = {"model": opts.model, "overrides": opts.overrides, "clients": clients, "rounds": rounds,
                "examples_per_client": per_client}
        runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in ENGINES}
        for i in range(repeats):  # interleaved, alternating who goes first
            for engine in ENGINES if i % 2 == 0 else ENGINES[::-1]:
                start = time.perf_counter()
                point_result = run_point("peer", {**spec, "engine": engine})
                runs[engine].append(summarize(point_result, time.perf_counter() - start))
            print(f"peer: {workload} ({clients} clients x {per_client} examples), repeat {i + 1}/{repeats}: "
                  + ", ".join(f"{e} steady round {r[-1]['steady_round_s']:.2f} s, "
                              f"setup {r[-1]['setup_s']:.1f} s, peak {r[-1]['tree_peak_pss_mb']:.0f} MB"
                              for e, r in runs.items()))

        def med(engine: str, key: str, runs: dict = runs) -> float:
            return median([r[key] for r in runs[engine]])

        sim, flower = ENGINES
        medians = {engine: {key: med(engine, key) for key in (
            "steady_round_s", "setup_s", "first_round_extra_s", "process_wall_s", "tree_cpu_s",
            "tree_peak_pss_mb")} for engine in ENGINES}
        # what Flower's runtime adds to each client's message in a steady round (may be < 0: noise)
        extra = (medians[flower]["steady_round_s"] - medians[sim]["steady_round_s"]) / clients
        same = all(runs[sim][0][k] == runs[flower][0][k] for k in ("test_accuracy", "train_loss"))
        results[workload] = {"clients": clients, "examples_per_client": per_client, "runs": runs,
                             "medians": medians, "flower_extra_s_per_client_in_steady_rounds": extra,
                             "same_metrics": same}
        for key, name in (("steady_round_s", "steady_round"), ("setup_s", "setup"),
                          ("process_wall_s", "wall"), ("tree_cpu_s", "tree_cpu"),
                          ("tree_peak_pss_mb", "peak_memory")):
            ratios[f"{workload}_{name}_flower_over_simulation"] = medians[flower][key] / medians[sim][key]
    settings = {"model": opts.model, "method": "prefix", "strategy": "fedavg", "engines": list(ENGINES),
                "workloads": {w: {"clients": c, "examples_per_client": e} for w, (c, e) in workloads.items()},
                "rounds": rounds, "repeats": repeats, "threads": 1, "ray_cpus": 1,
                "test_examples": TEST_EXAMPLES, "steady_state": f"median round_seconds of rounds 2..{rounds}"}
    path = write_result(opts, "peer", settings, results, ratios, __doc__.split("\n\n", 1)[1].strip())
    print_ratios("peer", ratios)
    print(f"peer: -> {path}")
    return ratios
