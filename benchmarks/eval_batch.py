"""Evaluation batch size: examples per second of `Method.evaluate` at each batch size, and what
the batch size changes in the metrics.

Each method runs through fedcustom's own code as in `throughput` (whose functions this reuses):
`Method.evaluate` (inference mode, length-sorted rows, each batch padded to its longest row) over
the same test rows and weights at every batch size, under the run's precision, on one torch thread
and on every core. Every repeat visits the sizes in a rotated order after one untimed pass at each.
Throughput is examples per wall second (median of repeats) at the given thread count; ratios are
each size's throughput over that of `LARGEST`. The metrics at each size against those at `LARGEST`
show what the size changes (`max_accuracy_change`, `max_loss_change`): only the rounding of
matrix products of other shapes, since masked padding adds nothing.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from benchmarks.common import Mark, Options, experiment_config, median, print_ratios, write_result
from benchmarks.throughput import build, time_evaluate

METHODS = ("prefix", "full")
SIZES = (8, 16, 32, 64, 128, 256)
LARGEST = SIZES[-1]


def measure(bench: Any, precision: str, threads: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    spans: dict[int, list[Mark]] = {b: [] for b in SIZES}
    metrics: dict[int, dict[str, float]] = {}
    for b in SIZES:  # warm-up: every shape's kernels once
        metrics[b] = time_evaluate(bench, precision, b)[1]
    for i in range(repeats):
        for b in SIZES[i % len(SIZES):] + SIZES[:i % len(SIZES)]:
            spans[b].append(time_evaluate(bench, precision, b)[0])
    n = len(bench.test)
    return {
        "eval_examples": n,
        "wall_s": {b: [m.wall for m in spans[b]] for b in SIZES},
        "examples_per_s": {b: n / median([m.wall for m in spans[b]]) for b in SIZES},
        "accuracy": {b: metrics[b].get("accuracy") for b in SIZES},
        "loss": {b: metrics[b].get("loss") for b in SIZES},
    }


def run(opts: Options) -> dict[str, float]:
    from fedcustom.core.device import resolve_precision

    n_test = 128 if opts.quick else 512
    repeats = opts.repeats or (1 if opts.quick else 3)
    cfg = experiment_config(opts, ["data.max_train_examples=32", f"data.max_test_examples={n_test}",
                                   "train.precision='auto'"])
    cores = os.cpu_count() or 1
    thread_counts = sorted({1, cores})
    results: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    for name in METHODS:
        bench = build(cfg, name)
        precision = resolve_precision(bench.device, cfg.train.precision)
        for threads in thread_counts:
            key = f"{name}_{threads}_threads"
            results[key] = r = measure(bench, precision, threads, repeats)
            speed = r["examples_per_s"]
            print(f"eval-batch: {name:6s} {threads} thread(s), {precision}, examples per second: "
                  + ", ".join(f"{b}: {speed[b]:.0f}" for b in SIZES))
            for b in SIZES[:-1]:
                ratios[f"{key}_batch_{b}_over_{LARGEST}"] = speed[b] / speed[LARGEST]
            r["max_accuracy_change"] = max(abs(r["accuracy"][b] - r["accuracy"][LARGEST]) for b in SIZES)
            r["max_loss_change"] = max(abs(r["loss"][b] - r["loss"][LARGEST]) for b in SIZES)
    torch.set_num_threads(1)  # as every benchmark leaves it (machine info records it)
    settings = {"model": cfg.model.name, "dataset": cfg.data.dataset, "methods": list(METHODS),
                "sizes": list(SIZES), "eval_examples": n_test, "max_length": cfg.model.max_length,
                "precision": precision, "threads": thread_counts, "repeats": repeats, "device": cfg.device}
    path = write_result(opts, "eval-batch", settings, results, ratios, __doc__.split("\n\n", 1)[1].strip())
    print_ratios("eval-batch", ratios)
    print(f"eval-batch: -> {path}")
    return ratios
