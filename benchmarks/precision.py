"""Precision: fp32 against bf16 autocast (config `train.precision = "bf16"`) per method.

Each method (full, lora, prompt, prefix) runs through fedcustom's own code as in `throughput`
(whose functions this reuses): `Method.fit` for one local epoch (the training loop puts every
forward pass under `torch.autocast(dtype=bfloat16)` for bf16; weights, gradients and the optimizer
stay fp32) and `Method.evaluate` at eval_batch_size under the same autocast, as a run evaluates.
Both precisions share one built model per method and train on the same batches (the same rows
and seed); every repeat times fp32 and bf16 back to back, alternating which goes first, after
one untimed warm-up step and evaluation batch of each. Both evaluations of a repeat see the same
weights, so their accuracies show what bf16 changes in the predictions. Ratios are bf16 / fp32
examples per second: the median over repeats of the per-repeat ratio of CPU times (one torch
thread; robust to other jobs) and of wall times. Whether bf16 can be fast on a CPU depends on
AMX / AVX-512 BF16 (machine.cpu_flags); without them it is emulated and usually slower.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmarks.common import Mark, Options, experiment_config, median, one_thread, print_ratios, write_result
from benchmarks.throughput import METHODS, build, time_evaluate, time_fit, warm_up

PRECISIONS = ("fp32", "bf16")


def measure(cfg: Any, method_name: str, repeats: int) -> dict[str, Any]:
    bench = build(cfg, method_name)
    train_cfg = {p: dataclasses.replace(cfg.train, precision=p) for p in PRECISIONS}
    for p in PRECISIONS:
        warm_up(bench, train_cfg[p])
    spans: dict[str, dict[str, list[Mark]]] = {p: {"train": [], "eval": []} for p in PRECISIONS}
    accuracy: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for i in range(repeats):
        order = PRECISIONS if i % 2 == 0 else PRECISIONS[::-1]
        for p in order:  # the same batches (seed i) in both precisions
            spans[p]["train"].append(time_fit(bench, train_cfg[p], i))
        for p in order:  # the same weights
            span, metrics = time_evaluate(bench, p, cfg.train.eval_batch_size)
            spans[p]["eval"].append(span)
            accuracy[p].append(metrics.get("accuracy", float("nan")))
    n = {"train": len(bench.train), "eval": len(bench.test)}
    out: dict[str, Any] = {"train_examples": n["train"], "eval_examples": n["eval"],
                           "trainable_parameters": bench.trainable_parameters}
    for p in PRECISIONS:
        for key, marks in spans[p].items():
            out[f"{p}_{key}_wall_s"] = [m.wall for m in marks]
            out[f"{p}_{key}_cpu_s"] = [m.cpu for m in marks]
            out[f"{p}_{key}_examples_per_s"] = n[key] / median([m.wall for m in marks])
            out[f"{p}_{key}_examples_per_cpu_s"] = n[key] / median([m.cpu for m in marks])
        out[f"{p}_eval_accuracy"] = accuracy[p]
    for key in ("train", "eval"):  # throughput bf16 / fp32 = time fp32 / time bf16, per repeat
        fp32, bf16 = spans["fp32"][key], spans["bf16"][key]
        out[f"{key}_bf16_over_fp32_cpu"] = median([a.cpu / b.cpu for a, b in zip(fp32, bf16, strict=True)])
        out[f"{key}_bf16_over_fp32_wall"] = median([a.wall / b.wall for a, b in zip(fp32, bf16, strict=True)])
    return out


def run(opts: Options) -> dict[str, float]:
    one_thread()
    n_train, n_test = (32, 64) if opts.quick else (128, 256)
    repeats = opts.repeats or (1 if opts.quick else 3)
    cfg = experiment_config(opts, [f"data.max_train_examples={n_train}", f"data.max_test_examples={n_test}"])
    results = {}
    for name in METHODS:
        results[name] = r = measure(cfg, name, repeats)
        print(f"precision: {name:7s} examples per CPU second, fp32 -> bf16: "
              f"train {r['fp32_train_examples_per_cpu_s']:7.1f} -> {r['bf16_train_examples_per_cpu_s']:7.1f} "
              f"({r['train_bf16_over_fp32_cpu']:.2f}x), eval {r['fp32_eval_examples_per_cpu_s']:7.1f} -> "
              f"{r['bf16_eval_examples_per_cpu_s']:7.1f} ({r['eval_bf16_over_fp32_cpu']:.2f}x)")
    ratios = {}
    for name in METHODS:
        for key in ("train", "eval"):
            ratios[f"{name}_{key}_bf16_over_fp32"] = results[name][f"{key}_bf16_over_fp32_cpu"]
            ratios[f"{name}_{key}_bf16_over_fp32_wall"] = results[name][f"{key}_bf16_over_fp32_wall"]
    settings = {"model": cfg.model.name, "dataset": cfg.data.dataset, "methods": list(METHODS),
                "precisions": list(PRECISIONS), "batch_size": cfg.train.batch_size,
                "eval_batch_size": cfg.train.eval_batch_size, "max_length": cfg.model.max_length,
                "repeats": repeats, "threads": 1, "device": cfg.device}
    path = write_result(opts, "precision", settings, results, ratios, __doc__.split("\n\n", 1)[1].strip())
    print_ratios("precision", ratios)
    print(f"precision: -> {path}")
    return ratios
