"""Limit: how close fedcustom's training comes to this machine's measured matrix-multiply peak.

Matmul: `torch.matmul` of square n x n matrices (the model's hidden and feed-forward sizes, e.g.
384 and 1536 for MiniLM, and a larger one) and of the model's largest product in training (a
batch's tokens x hidden @ hidden x feed-forward), in fp32 and bf16 (bf16 tensors: what autocast
hands the matmul), at 1 torch thread and at all cores (os.cpu_count(): fedcustom's default,
threads = 0). Each sample repeats the product until it takes about SAMPLE_S seconds, after a
warm-up; the best of the samples counts: GFLOP/s = 2 m k n / seconds. The peak at a dtype and a
thread count is the best over the shapes.

Training: fedcustom's training loop (`Method.fit`, one local epoch over the same rows and seed
each time, so the same batches) for full fine-tuning and prefix-tuning, in fp32 and under bf16
autocast (config `train.precision`), on 1 torch thread as every benchmark here. Its FLOPs are
counted exactly by torch's FlopCounterMode on one such pass: every matrix product (mm, addmm,
bmm, attention) of the forward and backward passes; elementwise work, the loss and the
optimizer are not counted (small, and no matmuls). The passes timed after it take the same
batches: achieved GFLOP/s = counted FLOPs / the best pass's seconds, and `fraction_of_peak` =
achieved / the matmul peak at the same dtype on 1 thread. Both clocks: the ratios use CPU time
(robust to other jobs; one thread), the `_wall` ratios wall time; on an idle machine they agree.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import torch

from benchmarks.common import Mark, Options, experiment_config, one_thread, print_ratios, write_result
from benchmarks.throughput import build, time_fit

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TRAIN_METHODS = ("full", "prefix")
SAMPLE_S = 0.2  # seconds of products per timed sample


def model_dims(cfg: Any) -> tuple[int, int]:
    """(hidden size, feed-forward size) of the configured backbone."""
    from transformers import AutoConfig

    from fedcustom.models.backbones import resolve

    config = AutoConfig.from_pretrained(resolve(cfg.model.name)[0])
    return config.hidden_size, config.intermediate_size


def time_matmul(m: int, k: int, n: int, dtype: torch.dtype, threads: int, samples: int) -> dict[str, Any]:
    """Best-of-`samples` GFLOP/s of an (m x k) @ (k x n) product on `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(m, k, generator=gen).to(dtype)
        b = torch.randn(k, n, generator=gen).to(dtype)
        out = torch.empty(m, n, dtype=dtype)
        start = time.perf_counter()
        torch.matmul(a, b, out=out)  # warm-up: the kernel's first call, and a first estimate
        calls = max(1, round(SAMPLE_S / max(time.perf_counter() - start, 1e-6)))
        walls, cpus = [], []
        for _ in range(samples):
            begin = Mark.now()
            for _ in range(calls):
                torch.matmul(a, b, out=out)
            span = Mark.now() - begin
            walls.append(span.wall / calls)
            cpus.append(span.cpu / calls)
    finally:
        torch.set_num_threads(previous)
    flops = 2 * m * k * n
    return {"m": m, "k": k, "n": n, "dtype": str(dtype).removeprefix("torch."), "threads": threads,
            "calls_per_sample": calls, "wall_s": walls, "cpu_s": cpus,
            "gflops": flops / min(walls) / 1e9, "gflops_per_cpu_s": flops / max(min(cpus), 1e-9) / 1e9}


def count_flops(bench: Any, train_cfg: Any) -> tuple[int, dict[str, int]]:
    """FLOPs of one training pass (seed 0, all rows), counted op by op; the pass is not timed."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        time_fit(bench, train_cfg, 0)
    by_op = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def training(cfg: Any, method_name: str, passes: int, peak: dict[str, dict[str, float]]) -> dict[str, Any]:
    bench = build(cfg, method_name)
    out: dict[str, Any] = {"examples_per_pass": len(bench.train),
                           "steps_per_pass": -(-len(bench.train) // cfg.train.batch_size),
                           "trainable_parameters": bench.trainable_parameters}
    for name in DTYPES:
        train_cfg = dataclasses.replace(cfg.train, precision=name)
        time_fit(bench, train_cfg, 0, bench.rows[:cfg.train.batch_size])  # warm-up step
        flops, by_op = count_flops(bench, train_cfg)
        spans = [time_fit(bench, train_cfg, 0) for _ in range(passes)]  # the counted batches again
        wall, cpu = min(m.wall for m in spans), min(m.cpu for m in spans)
        gflops, gflops_cpu = flops / wall / 1e9, flops / max(cpu, 1e-9) / 1e9
        out[name] = {"flops_per_pass": flops, "flops_by_op": by_op,
                     "wall_s": [m.wall for m in spans], "cpu_s": [m.cpu for m in spans],
                     "gflops": gflops, "gflops_per_cpu_s": gflops_cpu,
                     "fraction_of_peak": gflops_cpu / peak[name]["cpu"],
                     "fraction_of_peak_wall": gflops / peak[name]["wall"]}
    return out


def run(opts: Options) -> dict[str, float]:
    one_thread()
    n_train = 16 if opts.quick else 64
    samples = opts.repeats or (2 if opts.quick else 5)
    passes = opts.repeats or (1 if opts.quick else 3)
    cfg = experiment_config(opts, [f"data.max_train_examples={n_train}", "data.max_test_examples=1"])
    hidden, ffn = model_dims(cfg)
    tokens = cfg.train.batch_size * cfg.model.max_length  # a full batch at max_length
    squares = sorted({hidden, ffn, *(() if opts.quick else (3072,))})
    shapes = [(s, s, s) for s in squares] + [(tokens, hidden, ffn)]
    threads = sorted({1, os.cpu_count() or 1})
    matmul = [time_matmul(m, k, n, dtype, t, samples)
              for dtype in DTYPES.values() for t in threads for m, k, n in shapes]
    for r in matmul:
        print(f"limit: matmul {r['m']}x{r['k']} @ {r['k']}x{r['n']} {r['dtype']:8s} "
              f"{r['threads']} thread(s): {r['gflops']:7.1f} GFLOP/s")

    def best(name: str, t: int, key: str) -> float:
        return max(r[key] for r in matmul if r["dtype"] == str(DTYPES[name]).removeprefix("torch.")
                   and r["threads"] == t)

    peak = {name: {"wall": best(name, 1, "gflops"), "cpu": best(name, 1, "gflops_per_cpu_s")}
            for name in DTYPES}
    peaks = {name: {str(t): best(name, t, "gflops") for t in threads} for name in DTYPES}
    train = {name: training(cfg, name, passes, peak) for name in TRAIN_METHODS}
    for method, r in train.items():
        for name in DTYPES:
            print(f"limit: training {method:6s} {name}: {r[name]['gflops_per_cpu_s']:6.1f} GFLOP/s per CPU "
                  f"second = {100 * r[name]['fraction_of_peak']:.0f}% of the 1-thread {name} matmul peak "
                  f"({peak[name]['cpu']:.1f})")
    ratios = {}
    for suffix in ("", "_wall"):
        ratios.update({f"{method}_{name}_fraction_of_matmul_peak{suffix}":
                       train[method][name][f"fraction_of_peak{suffix}"]
                       for method in TRAIN_METHODS for name in DTYPES})
    ratios["matmul_peak_bf16_over_fp32"] = peak["bf16"]["cpu"] / peak["fp32"]["cpu"]
    ratios.update({f"{method}_training_bf16_over_fp32": train[method]["bf16"]["gflops_per_cpu_s"]
                   / train[method]["fp32"]["gflops_per_cpu_s"] for method in TRAIN_METHODS})
    if len(threads) > 1:
        ratios.update({f"matmul_peak_{name}_{threads[-1]}_threads_over_1": peaks[name][str(threads[-1])]
                       / peaks[name]["1"] for name in DTYPES})
    settings = {"model": cfg.model.name, "hidden_size": hidden, "intermediate_size": ffn,
                "matmul_shapes": [list(s) for s in shapes], "matmul_threads": threads,
                "matmul_samples": samples, "sample_s": SAMPLE_S, "training_methods": list(TRAIN_METHODS),
                "training_examples_per_pass": n_train, "training_passes": passes,
                "batch_size": cfg.train.batch_size, "max_length": cfg.model.max_length,
                "dataset": cfg.data.dataset, "training_threads": 1}
    results = {"matmul": matmul, "matmul_peak_gflops": peaks, "matmul_peak_1_thread": peak, "training": train}
    path = write_result(opts, "limit", settings, results, ratios, __doc__.split("\n\n", 1)[1].strip())
    print_ratios("limit", ratios)
    print(f"limit: -> {path}")
    return ratios
