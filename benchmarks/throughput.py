"""Throughput: examples per second of each method in local training and in evaluation.

Each method runs through fedcustom's own code: `Method.build_model` + `prepare`, the shared
training loop (`Method.fit`, one local epoch, batch size from [train]) and `Method.evaluate`
(inference mode, length-sorted batches of eval_batch_size). Tokenization and model loading are
outside the clock. One torch thread. How the evaluation's speed depends on its batch size is the
`eval-batch` benchmark's.
`--set device=cuda` (and `train.precision=bf16`) measure on a GPU; the clocks stay honest there
because training syncs every step (loss.item()) and evaluation on its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.common import Mark, Options, experiment_config, median, one_thread, print_ratios, write_result

METHODS = ("full", "lora", "prompt", "prefix")


@dataclass
class Bench:
    """One method's model, built and prepared by fedcustom, and the encoded splits it runs on."""

    method: Any
    model: Any
    train: Any
    test: Any
    rows: np.ndarray
    device: Any

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.method.trainable(self.model).values())


def build(cfg: Any, method_name: str) -> Bench:
    """The method's model on cfg's device and the encoded train/test splits (outside every clock)."""
    from fedcustom.core.config import component
    from fedcustom.core.device import resolve_device
    from fedcustom.core.registry import METHODS as REGISTRY
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
    return Bench(method, model, train, test, np.arange(len(train)), device)


def time_fit(bench: Bench, train_cfg: Any, seed: int, rows: np.ndarray | None = None) -> Mark:
    """One local epoch of `Method.fit` over `rows` (default all), its batches drawn with `seed`:
    the same seed and rows give the same batches, whatever train_cfg.precision."""
    from fedcustom.core.types import FitContext

    rows = bench.rows if rows is None else rows
    ctx = FitContext(cid=0, server_round=seed, seed=seed)
    start = Mark.now()
    bench.method.fit(bench.model, bench.train, rows, train_cfg, ctx)
    return Mark.now() - start


def time_evaluate(bench: Bench, precision: str, batch_size: int, test: Any = None) -> tuple[Mark, dict]:
    """`Method.evaluate` on the test split (or `test`) under the run's autocast; its metrics."""
    from fedcustom.core.device import autocast

    with autocast(bench.device, precision):
        start = Mark.now()
        metrics = bench.method.evaluate(bench.model, bench.test if test is None else test, batch_size)
        return Mark.now() - start, metrics


def warm_up(bench: Bench, train_cfg: Any) -> None:
    """One training step and one evaluation batch, untimed: the first call of a kernel (its
    oneDNN primitives, a dtype's first cast) is not what a run spends per step."""
    from fedcustom.data.batching import Encoded

    time_fit(bench, train_cfg, 0, bench.rows[:train_cfg.batch_size])
    n = min(len(bench.test), train_cfg.eval_batch_size)
    head = Encoded(bench.test.input_ids[:n], bench.test.lengths[:n], bench.test.labels[:n])
    time_evaluate(bench, train_cfg.precision, train_cfg.eval_batch_size, head)


def measure(cfg: Any, method_name: str, repeats: int) -> dict[str, float]:
    bench = build(cfg, method_name)
    spans: dict[str, list[Mark]] = {"train": [], "eval": []}
    for i in range(repeats):
        spans["train"].append(time_fit(bench, cfg.train, i))
        spans["eval"].append(time_evaluate(bench, cfg.train.precision, cfg.train.eval_batch_size)[0])
    train, test = bench.train, bench.test
    out: dict[str, Any] = {"train_examples": len(train), "eval_examples": len(test),
                           "trainable_parameters": bench.trainable_parameters}
    for key, n in (("train", len(train)), ("eval", len(test))):
        out[f"{key}_wall_s"] = [m.wall for m in spans[key]]
        out[f"{key}_cpu_s"] = [m.cpu for m in spans[key]]
        out[f"{key}_examples_per_s"] = n / median([m.wall for m in spans[key]])
        out[f"{key}_examples_per_cpu_s"] = n / median([m.cpu for m in spans[key]])
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
        print(f"throughput: {name:7s} per CPU second: train {r['train_examples_per_cpu_s']:7.1f} ex, "
              f"eval {r['eval_examples_per_cpu_s']:7.1f} ex (batch {cfg.train.eval_batch_size})")
    # ratios of examples per CPU second (robust to other jobs on the machine)
    full_train = results["full"]["train_examples_per_cpu_s"]
    ratios = {f"{name}_train_over_full": results[name]["train_examples_per_cpu_s"] / full_train
              for name in METHODS if name != "full"}
    ratios.update({f"{name}_eval_over_train": results[name]["eval_examples_per_cpu_s"]
                   / results[name]["train_examples_per_cpu_s"] for name in METHODS})
    settings = {"model": cfg.model.name, "dataset": cfg.data.dataset, "batch_size": cfg.train.batch_size,
                "eval_batch_size": cfg.train.eval_batch_size, "max_length": cfg.model.max_length,
                "repeats": repeats, "threads": 1, "device": cfg.device, "precision": cfg.train.precision}
    path = write_result(opts, "throughput", settings, results, ratios, __doc__.split("\n\n", 1)[1].strip())
    print_ratios("throughput", ratios)
    print(f"throughput: -> {path}")
    return ratios
