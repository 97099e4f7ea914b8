"""Throughput: examples per second of each method in local training and in evaluation.

Each method runs through fedcustom's own code: `Method.build_model` + `prepare`, the shared
training loop (`Method.fit`, one local epoch, batch size from [train]) and `Method.evaluate`
(inference mode, length-sorted batches of eval_batch_size). Tokenization and model loading are
outside the clock. One torch thread. Evaluation is also timed at batch size SMALL_EVAL_BATCH: on a
CPU, very large batches can be slower per example than moderate ones (cache), so both are shown.
`--set device=cuda` (and `train.precision=bf16`) measure on a GPU; the clocks stay honest there
because training syncs every step (loss.item()) and evaluation on its outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import Mark, Options, experiment_config, median, one_thread, print_ratios, write_result

METHODS = ("full", "lora", "prompt", "prefix")
SMALL_EVAL_BATCH = 32


def measure(cfg: Any, method_name: str, repeats: int) -> dict[str, float]:
    from fedcustom.core.config import component
    from fedcustom.core.device import autocast, resolve_device
    from fedcustom.core.registry import METHODS as REGISTRY
    from fedcustom.core.types import FitContext
    from fedcustom.data import load_task_data
    from fedcustom.data.batching import encode_split

    data = load_task_data(cfg.data)
    method = REGISTRY.get(method_name)(component("method", {"name": method_name}).options)
    model, tokenizer = method.build_model(cfg.model, len(data.label_names), cfg.seed)
    method.prepare(model)
    device = resolve_device(cfg.device)
    model.to(device)
    train = encode_split(data.train, tokenizer, cfg.model.max_length)
    test = encode_split(data.test, tokenizer, cfg.model.max_length)
    rows = np.arange(len(train))
    spans: dict[str, list[Mark]] = {"train": [], "eval": [], "eval_small": []}
    for i in range(repeats):
        start = Mark.now()
        method.fit(model, train, rows, cfg.train, FitContext(cid=0, server_round=i, seed=i))
        spans["train"].append(Mark.now() - start)
        with autocast(device, cfg.train.precision):
            start = Mark.now()
            method.evaluate(model, test, cfg.train.eval_batch_size)
            spans["eval"].append(Mark.now() - start)
            start = Mark.now()
            method.evaluate(model, test, SMALL_EVAL_BATCH)
            spans["eval_small"].append(Mark.now() - start)
    trainable = sum(p.numel() for p in method.trainable(model).values())
    out: dict[str, Any] = {"train_examples": len(train), "eval_examples": len(test),
                           "trainable_parameters": trainable}
    for key, n in (("train", len(train)), ("eval", len(test)), ("eval_small", len(test))):
        name = key.replace("eval_small", f"eval_at_batch_{SMALL_EVAL_BATCH}")
        out[f"{name}_wall_s"] = [m.wall for m in spans[key]]
        out[f"{name}_cpu_s"] = [m.cpu for m in spans[key]]
        out[f"{name}_examples_per_s"] = n / median([m.wall for m in spans[key]])
        out[f"{name}_examples_per_cpu_s"] = n / median([m.cpu for m in spans[key]])
    return out


def run(opts: Options) -> dict[str, float]:
    one_thread()
    n_train, n_test = (32, 128) if opts.quick else (128, 512)
    repeats = opts.repeats or (1 if opts.quick else 2)
    cfg = experiment_config(opts, [f"data.max_train_examples={n_train}", f"data.max_test_examples={n_test}"])
    results = {}
    for name in METHODS:
        results[name] = measure(cfg, name, repeats)
        r = results[name]
        small = r[f"eval_at_batch_{SMALL_EVAL_BATCH}_examples_per_cpu_s"]
        print(f"throughput: {name:7s} per CPU second: train {r['train_examples_per_cpu_s']:7.1f} ex, "
              f"eval {r['eval_examples_per_cpu_s']:7.1f} ex (batch {cfg.train.eval_batch_size}), "
              f"{small:7.1f} ex (batch {SMALL_EVAL_BATCH})")
    # ratios of examples per CPU second (robust to other jobs on the machine)
    full_train = results["full"]["train_examples_per_cpu_s"]
    ratios = {f"{name}_train_over_full": results[name]["train_examples_per_cpu_s"] / full_train
              for name in METHODS if name != "full"}
    ratios.update({f"{name}_eval_over_train": results[name]["eval_examples_per_cpu_s"]
                   / results[name]["train_examples_per_cpu_s"] for name in METHODS})
    ratios.update({f"{name}_eval_batch_{SMALL_EVAL_BATCH}_over_{cfg.train.eval_batch_size}":
                   results[name][f"eval_at_batch_{SMALL_EVAL_BATCH}_examples_per_cpu_s"]
                   / results[name]["eval_examples_per_cpu_s"] for name in METHODS})
    settings = {"model": cfg.model.name, "dataset": cfg.data.dataset, "batch_size": cfg.train.batch_size,
                "eval_batch_size": cfg.train.eval_batch_size, "max_length": cfg.model.max_length,
                "repeats": repeats, "threads": 1, "device": cfg.device, "precision": cfg.train.precision}
    path = write_result(opts, "throughput", settings, results, ratios, __doc__.split("\n\n", 1)[1].strip())
    print_ratios("throughput", ratios)
    print(f"throughput: -> {path}")
    return ratios
