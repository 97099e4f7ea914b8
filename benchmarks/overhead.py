"""Overhead: a fedcustom federated run against a plain PyTorch + PEFT loop doing the same steps.

Both sides train prefix-tuning (PEFT) on the same backbone with the same mean-pooling linear head,
on exactly the same batches: the plain loop replays the (round, client, batch) plan the engine
draws, so each side runs the same forward/backward shapes and the same number of AdamW steps.

Measured span, fedcustom: from the end of round 0 (initial evaluation, saved) to the end of the
last round, through `run_experiment` unmodified: client sampling, state download (safetensors
both ways), a fresh optimizer per client, batching, training, screening of updates, FedAvg,
evaluation on the test set, records and a checkpoint written each round.
Measured span, plain loop: the same optimizer steps, padding its batches on the fly, with one
optimizer for all steps and no state exchange, and the same evaluation (the same test rows, the
same batch size) after each round. Model loading and tokenization are outside both spans
(fedcustom's are reported as `setup_seconds`). Both sides start warm: one untimed run of each
comes before the timed repeats. Both clocks are reported; the ratios are medians of per-repeat
ratios (ours / plain, run back to back), so slow drifts of the machine's load cancel. CPU time is
the robust one on a shared machine: both sides run one torch thread.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import Mark, Options, experiment_config, median, one_thread, print_ratios, write_result


class PlainPrefixClassifier(nn.Module):
    """The reference model, written the way a PEFT user would: prefix-tuned encoder + linear head."""

    def __init__(self, path: str, num_labels: int, virtual_tokens: int) -> None:
        super().__init__()
        from peft import PrefixTuningConfig, TaskType, get_peft_model
        from transformers import AutoModel

        base = AutoModel.from_pretrained(path, dtype=torch.float32)
        config = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=virtual_tokens)
        self.encoder = get_peft_model(base, config)  # freezes the base model
        self.head = nn.Linear(base.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def batch_plan(cfg: Any) -> tuple[list[list[np.ndarray]], Any]:
    """The rows of every training batch the federated run takes, round by round, and the task data.

    Drawn with the engine's own sampling and seeding (untimed), so the plain loop replays them."""
    from fedcustom.data import load_task_data, partition_indices
    from fedcustom.data.batching import Encoded, train_batches
    from fedcustom.federation.rounds import client_seed, sample_clients

    data = load_task_data(cfg.data)
    parts = partition_indices(data.train, cfg.partition, cfg.seed)
    n = len(data.train)
    # Only lengths matter for batching; labels = row ids make each batch say which rows it holds.
    from transformers import AutoTokenizer

    from fedcustom.models.backbones import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.model.name)[0])
    ids = tokenizer(list(data.train["text"]), truncation=True, max_length=cfg.model.max_length)["input_ids"]
    lengths = torch.tensor([len(x) for x in ids])
    index = Encoded(torch.zeros((n, 1), dtype=torch.long), lengths, torch.arange(n))
    plan: list[list[np.ndarray]] = []
    for server_round in range(1, cfg.federation.rounds + 1):
        plan.append([])
        for cid in sample_clients(len(parts), cfg.federation.fraction_fit, cfg.seed, server_round):
            rng = np.random.default_rng(client_seed(cfg.seed, server_round, cid))
            for _ in range(cfg.train.local_epochs):
                batches = train_batches(index, parts[cid], cfg.train.batch_size, rng)
                plan[-1] += [b.labels.numpy() for b in batches]
    test = tokenizer(list(data.test["text"]), truncation=True, max_length=cfg.model.max_length)["input_ids"]
    return plan, (data, ids, test, tokenizer.pad_token_id)


def padded(tokens: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(t) for t in tokens])
    return batch, (torch.arange(batch.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()


@torch.no_grad()
def plain_evaluate(model: nn.Module, tokens: list[torch.Tensor], labels: torch.Tensor, batch_size: int,
                   pad_id: int, device: torch.device) -> float:
    """Test accuracy, batched as fedcustom's evaluation is (eval_batch_size rows in order)."""
    model.eval()
    correct = 0
    for start in range(0, len(tokens), batch_size):
        batch, mask = padded(tokens[start:start + batch_size], pad_id)
        logits = model(batch.to(device), mask.to(device))
        correct += int((logits.argmax(-1).cpu() == labels[start:start + batch_size]).sum())
    model.train()
    return correct / len(tokens)


def plain_loop(cfg: Any, plan: list[list[np.ndarray]], task: Any) -> Mark:
    """Time the plain loop takes for every batch in `plan`, evaluating after each round (model
    built before the clock)."""
    from fedcustom.core.device import resolve_device
    from fedcustom.models.backbones import resolve

    data, ids, test_ids, pad_id = task
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)  # the same device as the fedcustom run it is compared with
    model = PlainPrefixClassifier(resolve(cfg.model.name)[0], len(data.label_names),
                                  cfg.method.options.num_virtual_tokens).to(device)
    tokens = [torch.tensor(x) for x in ids]
    labels = torch.tensor(list(data.train["label"]))
    test_tokens, test_labels = [torch.tensor(x) for x in test_ids], torch.tensor(list(data.test["label"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model.train()
    start = Mark.now()
    for round_plan in plan:
        for rows in round_plan:
            batch, mask = padded([tokens[i] for i in rows], pad_id)
            loss = F.cross_entropy(model(batch.to(device), mask.to(device)), labels[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            optimizer.step()
            loss.item()  # a real loop logs its loss; fedcustom's does too
        plain_evaluate(model, test_tokens, test_labels, cfg.train.eval_batch_size, pad_id, device)
    return Mark.now() - start


def fedcustom_run(cfg: Any) -> tuple[Mark, float]:
    """(time of rounds 1..R, wall seconds of everything else) for one real `run_experiment`."""
    from fedcustom.runs.experiment import run_experiment

    marks: list[Mark] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_experiment(dataclasses.replace(cfg, output_dir=tmp), log=lambda *_: None,
                       on_record=lambda _mode, _record: marks.append(Mark.now()))
        total = time.perf_counter() - start
    span = marks[-1] - marks[0]
    return span, total - span.wall


def run(opts: Options) -> dict[str, float]:
    one_thread()
    clients, rounds, per_client, test = (4, 2, 16, 8) if opts.quick else (8, 3, 16, 32)
    repeats = opts.repeats or (2 if opts.quick else 5)
    cfg = experiment_config(opts, [
        "modes=['federated']", "method.name=prefix", "partition.scheme=iid",
        f"partition.num_clients={clients}", f"federation.rounds={rounds}",
        f"data.max_train_examples={clients * per_client}", f"data.max_test_examples={test}",
    ])
    plan, task = batch_plan(cfg)
    fedcustom_run(cfg)  # warm-up of both sides, untimed: the timed repeats all start warm
    plain_loop(cfg, plan, task)
    ours: list[Mark] = []
    plain: list[Mark] = []
    setup: list[float] = []
    for i in range(repeats):  # interleaved, alternating who goes first: load drifts on a shared machine
        for side in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):
            if side == "ours":
                span, other = fedcustom_run(cfg)
                ours.append(span)
                setup.append(other)
            else:
                plain.append(plain_loop(cfg, plan, task))
        print(f"overhead: repeat {i + 1}/{repeats}: fedcustom {ours[-1].wall:.2f} s wall / "
              f"{ours[-1].cpu:.2f} s CPU, plain loop {plain[-1].wall:.2f} s wall / {plain[-1].cpu:.2f} s CPU")
    steps = sum(len(r) for r in plan)
    examples = int(sum(len(b) for r in plan for b in r))
    ratios = {
        "cpu_time_ratio": median([a.cpu / b.cpu for a, b in zip(ours, plain, strict=True)]),
        "wall_time_ratio": median([a.wall / b.wall for a, b in zip(ours, plain, strict=True)]),
    }
    results = {
        "optimizer_steps": steps, "examples": examples,
        "fedcustom_wall_s": [m.wall for m in ours], "fedcustom_cpu_s": [m.cpu for m in ours],
        "plain_wall_s": [m.wall for m in plain], "plain_cpu_s": [m.cpu for m in plain],
        "fedcustom_setup_wall_s": setup,
        "fedcustom_median_cpu_s": median([m.cpu for m in ours]),
        "plain_median_cpu_s": median([m.cpu for m in plain]),
        "fedcustom_median_wall_s": median([m.wall for m in ours]),
        "plain_median_wall_s": median([m.wall for m in plain]),
    }
    settings = {"model": cfg.model.name, "method": "prefix",
                "virtual_tokens": cfg.method.options.num_virtual_tokens,
                "clients": clients, "rounds": rounds, "examples_per_client": per_client,
                "batch_size": cfg.train.batch_size, "max_length": cfg.model.max_length,
                "test_examples_evaluated_per_round": test, "warm_up_runs": 1,
                "dataset": cfg.data.dataset, "repeats": repeats, "threads": 1}
    path = write_result(opts, "overhead", settings, results, ratios, __doc__.split("\n\n", 2)[2].strip())
    print_ratios("overhead", ratios)
    print(f"overhead: {steps} optimizer steps -> {path}")
    return ratios
