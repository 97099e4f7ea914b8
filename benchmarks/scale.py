"""Scale: seconds per round and peak memory for 10, 100, 1000 (and 10,000) simulated clients
(prefix-tuning).

Each point is a real `run_experiment` in a fresh process (so its peak memory is its own): IID
partition, a few examples per client, one local step per client per round (batch size = the
client's examples), a 64-example test set evaluated after every round, records and checkpoints
written. The in-process engine holds ONE base model; a client is only (its rows, the state it
receives). The round takes each client's payload as it arrives and keeps the updates in memory up
to federation.update_memory_mb (default 256 MB of payloads), the rest on disk until aggregated
(federation/inbox.py): past that budget, memory should stop growing with the number of clients,
and never grow with copies of the model.

Every client holds rows of its own: a point uses min(4, training rows // clients) examples per
client (2 with --quick), never a row twice. rotten-tomatoes has 10,202 training rows, so 10,000
clients hold one example each (batch 1: less work per client than the other points, the same
298 KB state); the JSON records each point's examples_per_client.

With `--workers 1,2` every client count runs once per worker count (config `workers`: forked
processes that share the base model, one torch thread each); the ratios compare seconds per round
and the peak PSS of the process tree with the first count, and each point's records and final
state (timings aside) are checked to be the same as with the first count. CPU seconds per round
are summed over the process and its workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from contextlib import suppress
from typing import Any

import psutil
import torch

from benchmarks.common import Options, experiment_config, one_thread, print_ratios, run_point, write_result


def point(spec: dict[str, Any]) -> dict[str, Any]:
    """One scale point, run inside its own process: `python -m benchmarks _point scale SPEC`."""
    from safetensors.torch import load_file

    from fedcustom.core.device import peak_rss_mb
    from fedcustom.models.backbones import load_backbone
    from fedcustom.runs.experiment import run_experiment

    one_thread()
    opts = Options(model=spec["model"], overrides=spec["overrides"])
    n, per_client = spec["clients"], spec["examples_per_client"]
    cfg = experiment_config(opts, [
        "modes=['federated']", "method.name=prefix", "partition.scheme=iid", f"partition.num_clients={n}",
        f"data.max_train_examples={n * per_client}", "data.max_test_examples=64",
        f"train.batch_size={per_client}", f"federation.rounds={spec['rounds']}",
        f"federation.fraction_fit={spec['fraction_fit']}", f"workers={spec.get('workers', 1)}",
    ])
    rss_at_round0: list[float] = []
    cpu_marks: list[float] = []
    process = psutil.Process()

    def tree_cpu() -> float:
        """CPU seconds of this process and its workers (forked at round 1, alive until the end)."""
        total = 0.0
        for proc in [process, *process.children(recursive=True)]:
            with suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def on_record(_mode: str, record: dict[str, Any]) -> None:
        cpu_marks.append(tree_cpu())
        if record["round"] == 0:  # model loaded, data tokenized, initial evaluation done
            rss_at_round0.append(process.memory_info().rss / 2**20)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        results = run_experiment(dataclasses.replace(cfg, output_dir=tmp), log=lambda *_: None,
                                 on_record=on_record)
        wall = time.perf_counter() - start
        digest = numbers_digest(results["federated"].records,
                                load_file(results["federated"].path / "state.safetensors"))
    rounds = [r for r in results["federated"].records if r["round"] > 0]
    backbone, _ = load_backbone(cfg.model)
    model_mb = sum(p.numel() * p.element_size() for p in backbone.parameters()) / 2**20
    return {
        "clients": n,
        "examples_per_client": per_client,
        "sampled_per_round": rounds[0]["clients"],
        "round_seconds": [r["round_seconds"] for r in rounds],
        "client_seconds": [r["client_seconds"] for r in rounds],
        "round_cpu_seconds": [b - a for a, b in zip(cpu_marks, cpu_marks[1:], strict=False)],
        "state_bytes_per_client": rounds[0]["bytes_up"] / max(rounds[0]["accepted"], 1),
        "rss_after_setup_mb": rss_at_round0[0],
        "peak_rss_mb": peak_rss_mb(),
        "base_model_mb": model_mb,
        "wall_seconds": wall,
        "workers": spec.get("workers", 1),
        "numbers_digest": digest,
    }


TIMING = ("client_seconds", "round_seconds", "peak_rss_mb")


def numbers_digest(records: list[dict[str, Any]], state: dict[str, Any]) -> str:
    """sha256 of a run's records (timings and memory aside) and final state: equal digests, the
    same numbers."""
    h = hashlib.sha256(json.dumps([{k: v for k, v in r.items() if k not in TIMING} for r in records],
                                  sort_keys=True).encode())
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def training_rows(opts: Options) -> int:
    """Rows of the training split of the benchmark's dataset (with the user's --set), uncapped."""
    from fedcustom.data.datasets import load_task_data

    cfg = experiment_config(opts, [])
    return len(load_task_data(dataclasses.replace(cfg.data, max_train_examples=0)).train)


def examples_per_client(wanted: int, rows: int, clients: int) -> int:
    """As many as `wanted` examples per client, fewer where `rows` cannot give every client that
    many rows of its own; a UserError where they cannot give each one (rows are never shared)."""
    from fedcustom.core.errors import UserError

    if rows < clients:
        raise UserError(f"scale: {clients:,} clients need at least one training row each; the dataset "
                        f"has {rows:,} (a row held by two clients would make them share data)")
    return min(wanted, rows // clients)


def run(opts: Options) -> dict[str, float]:
    one_thread()
    wanted = 2 if opts.quick else 4
    rows = training_rows(opts)
    rounds = 1
    points = []
    for n in opts.clients:
        per_client = examples_per_client(wanted, rows, n)
        # --quick trains at most 10 clients a round (all 1000 are still simulated and sampled from)
        fraction = min(1.0, 10 / n) if opts.quick else 1.0
        for workers in opts.workers:
            spec = {"model": opts.model, "overrides": opts.overrides, "clients": n,
                    "examples_per_client": per_client, "rounds": rounds, "fraction_fit": fraction,
                    "workers": workers}
            # about 0.1 CPU s per client here: a 10,000-client point is far longer than the default
            p = run_point("scale", spec, timeout=1800 + 0.3 * n * rounds * fraction)
            p["seconds_per_round"] = sum(p["round_seconds"]) / len(p["round_seconds"])
            p["seconds_per_client"] = p["seconds_per_round"] / p["sampled_per_round"]
            p["cpu_seconds_per_round"] = sum(p["round_cpu_seconds"]) / len(p["round_cpu_seconds"])
            p["cpu_seconds_per_client"] = p["cpu_seconds_per_round"] / p["sampled_per_round"]
            p["growth_mb"] = p["peak_rss_mb"] - p["rss_after_setup_mb"]
            points.append(p)
            print(f"scale: {n:5d} clients ({p['sampled_per_round']} trained, {per_client} examples each), "
                  f"{workers} worker(s): "
                  f"{p['seconds_per_round']:.1f} s/round, "
                  f"{p['cpu_seconds_per_client'] * 1000:.0f} CPU ms/client, "
                  f"peak RSS {p['peak_rss_mb']:.0f} MB "
                  f"(+{p['growth_mb']:.0f} MB during rounds; base model {p['base_model_mb']:.0f} MB), "
                  f"tree PSS {p['tree_peak_pss_mb']:.0f} MB")
    ratios = client_ratios([p for p in points if p["workers"] == opts.workers[0]])
    worker_ratios, same = compare_workers(points, opts.workers)
    ratios |= worker_ratios
    settings = {"model": opts.model, "method": "prefix", "clients": list(opts.clients),
                "workers": list(opts.workers), "training_rows": rows,
                # per point: min(wanted, training_rows // clients), every row held by one client only
                "examples_per_client": [p["examples_per_client"] for p in points], "rounds": rounds,
                "update_memory_mb": experiment_config(opts, []).federation.update_memory_mb,
                "fraction_fit": [p["sampled_per_round"] / p["clients"] for p in points],
                "threads": 1, "overrides": opts.overrides}
    notes = __doc__.split("\n\n", 1)[1].strip()
    # another worker count than the default is another experiment: it does not replace scale.json
    name = "scale" if opts.workers == (1,) else "scale-workers"
    path = write_result(opts, name, settings, {"points": points, "same_numbers": same}, ratios, notes)
    print_ratios(name, ratios)
    for key, equal in same.items():
        print(f"{name}: same records and final state as {opts.workers[0]} worker(s), {key}: "
              f"{'yes' if equal else 'NO'}")
    print(f"{name}: -> {path}")
    return ratios


def client_ratios(points: list[dict[str, Any]]) -> dict[str, float]:
    """How memory and CPU grow from the smallest client count to the largest (one worker count)."""
    if len(points) < 2:
        return {}
    small, large = points[0], points[-1]
    extra = large["sampled_per_round"] - small["sampled_per_round"]
    per_client_mb = (large["growth_mb"] - small["growth_mb"]) / max(extra, 1)
    return {
        "peak_rss_large_over_small": large["peak_rss_mb"] / small["peak_rss_mb"],
        "cpu_per_client_large_over_small": large["cpu_seconds_per_client"] / small["cpu_seconds_per_client"],
        # < 1 means each extra client costs less memory than one more copy of the base model would
        "memory_per_extra_client_over_model_copy": per_client_mb / large["base_model_mb"],
        "memory_per_extra_client_over_state": per_client_mb * 2**20 / large["state_bytes_per_client"],
    }


def compare_workers(points: list[dict[str, Any]], workers: tuple[int, ...]
                    ) -> tuple[dict[str, float], dict[str, bool]]:
    """Per client count, each further worker count against the first: the speed-up of a round
    (> 1: faster), the peak PSS of the process tree (workers share the base model: near 1, not
    one model more per worker), and whether the numbers are the same."""
    ratios, same = {}, {}
    first = {p["clients"]: p for p in points if p["workers"] == workers[0]}
    for p in points:
        base = first[p["clients"]]
        if p is base:
            continue
        key = f"{p['workers']}_workers_{p['clients']}_clients"
        ratios[f"round_speedup_{key}"] = base["seconds_per_round"] / p["seconds_per_round"]
        ratios[f"tree_pss_{key}_over_{workers[0]}"] = p["tree_peak_pss_mb"] / base["tree_peak_pss_mb"]
        equal = p["numbers_digest"] == base["numbers_digest"]
        same[f"{p['workers']} workers, {p['clients']} clients"] = equal
    return ratios, same
