"""A run's trained model, loaded back from its folder ready to predict (`Result.model()`).

The model is rebuilt the way the experiment built it (tasks.task_for, the task's model builder,
`Method.prepare`) and the mode's final exchanged state is loaded with `Method.set_state`, which is
what the server's `adopt` does for every method that keeps the default. So the model predicts
exactly what the run's last evaluation measured.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from fedcustom.core.config import MODES, ExperimentConfig
from fedcustom.core.device import autocast, check_quantization, model_device, resolve_device
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.data import TaskData, load_task_data
from fedcustom.data.batching import encode, eval_batches
from fedcustom.data.datasets import to_dataset
from fedcustom.data.files import Table
from fedcustom.data.pairs import prompt_ids
from fedcustom.methods.base import Method
from fedcustom.runs.experiment import LABELS
from fedcustom.tasks import task_for


@dataclass
class TrainedModel:
    """`module`: the task model with the method applied, in eval mode; `labels`: class names by
    id (classification); `task`: classification or generation."""

    module: nn.Module
    tokenizer: Any
    labels: list[str]
    task: str
    config: ExperimentConfig

    @torch.inference_mode()
    def predict(self, texts: str | Iterable[str]) -> list[str]:
        """A label name per text (classification), or the generated response (generation)."""
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        self.module.eval()
        if not texts:
            return []
        if self.task == "generation":
            return [self.generate(t) for t in texts]
        cfg = self.config
        # The row numbers ride as the labels, so the evaluation's own batches (eval_batches: sorted
        # by length, eval_batch_size) can be used: on a run's test split these are the predictions
        # its recorded metrics counted, bit for bit.
        data = encode(texts, range(len(texts)), self.tokenizer, cfg.model.max_length)
        device = model_device(self.module)
        ids = np.empty(len(texts), dtype=np.int64)
        for batch in eval_batches(data, np.arange(len(texts)), cfg.train.eval_batch_size):
            on_device = batch.to(device)
            with autocast(device, cfg.train.precision):
                logits = self.module(on_device.input_ids, on_device.attention_mask)
            ids[batch.labels.numpy()] = logits.float().argmax(-1).cpu().numpy()
        return [self.labels[i] for i in ids]

    def generate(self, text: str) -> str:
        """Greedy, with the prompt framed and truncated as in training (like `fedcustom generate`)."""
        cfg, device = self.config, model_device(self.module)
        budget = cfg.model.max_length - cfg.generation.max_response_tokens
        ids = torch.tensor(prompt_ids(self.tokenizer, text, budget, cfg.generation), device=device)
        with autocast(device, cfg.train.precision):
            return self.module.generate_one(ids)


def load_model(run_dir: Path, cfg: ExperimentConfig, mode: str, device: str | None = None,
               best: bool = False) -> TrainedModel:
    """Mode `mode` of the run in `run_dir` (saved with `cfg`), on `device` (default: cfg.device);
    `best`: the round of best validation accuracy (federation.save_best) instead of the final one."""
    if mode not in MODES:
        raise UserError(f"mode {mode!r}: expected one of {list(MODES)}")
    if mode == "local":
        raise UserError("mode 'local' has no single model: every client trained alone")
    state_file = run_dir / mode / ("best" if best else "") / "state.safetensors"
    if best and not state_file.is_file():
        raise UserError(f"{run_dir}: mode '{mode}' has no best round ({state_file}): it needs "
                        "data.validation_fraction > 0 and federation.save_best = true")
    if not state_file.is_file():
        raise UserError(f"{run_dir}: mode '{mode}' has no final state ({state_file}): not run, or "
                        "not finished (resume it with `fedcustom run --resume`)")
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    if type(method).adopt is not Method.adopt:
        # e.g. distillation: its server model is trained on each round's consensus, so the saved
        # state alone does not make it; the mode folder's adapter/ holds that model
        raise UserError(f"method '{method.name}': the server model is not loaded from the exchanged "
                        f"state; use the saved model in {run_dir / mode / 'adapter'}")
    data = saved_labels(run_dir, cfg)
    target = resolve_device(device or cfg.device)
    check_quantization(target, cfg.model.quantization)
    model, tokenizer = task_for(cfg, method, data).build_model(method, cfg, data)
    method.prepare(model)
    model.to(target)
    method.set_state(model, load_file(state_file))
    model.eval()
    return TrainedModel(model, tokenizer, data.label_names, data.kind, cfg)


def saved_labels(run_dir: Path, cfg: ExperimentConfig) -> TaskData:
    """Empty splits that carry the run's task and label names: all a model builder reads."""
    path = run_dir / LABELS
    if not path.is_file():  # a run folder from before labels.json: read its data again
        return load_task_data(cfg.data)
    saved = json.loads(path.read_text())
    generation = saved["task"] == "generation"
    table = Table([], np.zeros(0, dtype=np.int64), saved["labels"], [] if generation else None)
    empty = to_dataset(table, np.zeros(0, dtype=np.int64))
    return TaskData(cfg.data.dataset, empty, empty, None, list(saved["labels"]))
