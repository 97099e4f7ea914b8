"""Large-model options: peak memory and seconds per step of LoRA training under each way of holding
the base (docs/config.md#large-models): fp32, bf16, bf16 with gradient checkpointing, 4-bit and
8-bit bitsandbytes, and fp32 with the step cut into micro-batches (grad_accumulation).

Each setting runs in a fresh process (its peak RSS is its own; loading's peak and training's are
recorded apart): the classifier of `--model`
(record it with `--model smollm2`) is built and prepared through fedcustom's own code, then
`Method.fit` (the shared training loop) takes one warm-up step and STEPS timed steps of BATCH
examples on rotten-tomatoes. One torch thread. A setting whose package is missing (bitsandbytes)
is recorded as unavailable with the reason.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from benchmarks.common import Mark, Options, experiment_config, median, one_thread, run_point, write_result

BATCH = 8
SETTINGS: dict[str, list[str]] = {
    "fp32": [],
    "bf16": ["model.dtype=bf16"],
    "bf16_checkpointing": ["model.dtype=bf16", "model.gradient_checkpointing=true"],
    "4bit": ["model.quantization='4bit'", "model.dtype=bf16"],
    "8bit": ["model.quantization='8bit'"],
    "fp32_accumulation_4": [f"train.batch_size={BATCH // 4}", "train.grad_accumulation=4"],
}


def status_mb(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: the peak since start or last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the peak so far


def reset_peak() -> bool:
    """Start a new VmHWM (Linux: writing 5 to clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def point(spec: dict[str, Any]) -> dict[str, Any]:
    """One setting, in this (fresh) process."""
    import numpy as np
    import torch

    from fedcustom.core.config import load_config
    from fedcustom.core.device import check_quantization
    from fedcustom.core.registry import METHODS
    from fedcustom.core.types import FitContext
    from fedcustom.data import load_task_data
    from fedcustom.data.batching import encode_split

    one_thread()
    cfg = load_config(None, spec["overrides"])
    check_quantization(torch.device("cpu"), cfg.model.quantization)
    data = load_task_data(cfg.data)
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    model, tokenizer = method.build_model(cfg.model, len(data.label_names), cfg.seed)
    method.prepare(model)
    load_peak, loaded = status_mb("VmHWM"), status_mb("VmRSS")
    separate = reset_peak()  # training's peak apart from loading's (a bf16 load passes through fp32)
    train = encode_split(data.train, tokenizer, cfg.model.max_length)
    per_step = cfg.train.batch_size * cfg.train.grad_accumulation
    method.fit(model, train, np.arange(per_step), cfg.train, FitContext(0, 1, 0))  # warm-up step
    steps = spec["steps"]
    spans, losses = [], []
    for i in range(steps):
        start = Mark.now()
        local = method.fit(model, train, np.arange(per_step * (i + 1), per_step * (i + 2)), cfg.train,
                           FitContext(0, 2 + i, 2 + i))
        spans.append(Mark.now() - start)
        losses.append(local.loss)
    base = [p for p in model.parameters() if not p.requires_grad]
    return {"load_peak_rss_mb": load_peak, "rss_after_load_mb": loaded,
            "train_peak_rss_mb": status_mb("VmHWM"), "train_peak_separate": separate,
            "base_weight_mb": sum(p.numel() * p.element_size() for p in base) / 2**20,
            "seconds_per_step": median([s.wall for s in spans]),
            "cpu_seconds_per_step": median([s.cpu for s in spans]),
            "losses": losses, "examples_per_step": per_step}


def run(opts: Options) -> dict[str, Any]:
    one_thread()
    steps, length = (1, 32) if opts.quick else (opts.repeats or 3, 64)
    own = ["method.name=lora", f"model.max_length={length}", f"train.batch_size={BATCH}",
           f"data.max_train_examples={BATCH * (steps + 1)}", "data.max_test_examples=8"]
    experiment_config(opts, own)  # a bad --set fails here, once
    results: dict[str, Any] = {}
    for name, overrides in SETTINGS.items():
        spec = {"overrides": ["threads=1", f"model.name={opts.model!r}", "train.precision='fp32'", *own,
                              *overrides, *opts.overrides],
                "steps": steps}
        try:
            results[name] = run_point("memory", spec)
        except RuntimeError as e:  # e.g. bitsandbytes missing: say so, measure the rest
            results[name] = {"unavailable": str(e).splitlines()[-1]}
        r = results[name]
        if "unavailable" in r:
            print(f"memory: {name:20s} unavailable: {r['unavailable']}")
        else:
            print(f"memory: {name:20s} training peak RSS {r['train_peak_rss_mb']:6.0f} MB, loading peak "
                  f"{r['load_peak_rss_mb']:6.0f} MB, base weights {r['base_weight_mb']:5.0f} MB, "
                  f"{r['seconds_per_step']:5.2f} s/step")
    fp32 = results["fp32"]
    ratios = {f"{name}_train_peak_rss_over_fp32": r["train_peak_rss_mb"] / fp32["train_peak_rss_mb"]
              for name, r in results.items() if "train_peak_rss_mb" in r}
    ratios |= {f"{name}_step_cpu_s_over_fp32": r["cpu_seconds_per_step"] / fp32["cpu_seconds_per_step"]
               for name, r in results.items() if "cpu_seconds_per_step" in r}
    write_result(opts, "memory", {"model": opts.model, "method": "lora (rank 8)", "batch": BATCH,
                                  "max_length": length, "steps": steps, "settings": SETTINGS},
                 results, ratios,
                 "Each setting in a fresh process, one torch thread. load_peak_rss_mb: the process's peak "
                 "RSS (VmHWM) up to the prepared model; train_peak_rss_mb: its peak from then on (VmHWM "
                 "reset through /proc/self/clear_refs; where that fails, the peak since start); seconds "
                 "per step are medians of the timed steps after one warm-up step; base_weight_mb counts "
                 "frozen parameters as stored (k-bit: packed).")
    return results
