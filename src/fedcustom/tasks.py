"""Task kinds: what a dataset asks of the model. A classification dataset (text -> label) gets
the method's task model (default: backbone + classifier head) and one token row per text; a
generation dataset (prompt -> response) gets a causal LM and prompt+response rows whose labels
mask everything but the response. The loss and metrics come with the model (models.TaskModel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedcustom.core import extras
from fedcustom.core.config import ExperimentConfig
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.data.batching import Encoded, encode_split
from fedcustom.data.datasets import TaskData
from fedcustom.data.pairs import encode_pairs
from fedcustom.methods.base import Method
from fedcustom.models.lm import build_language_model


@dataclass(frozen=True)
class Task:
    build_model: Callable[[Method, ExperimentConfig, TaskData], tuple[nn.Module, Any]]
    encode: Callable[[Any, Any, ExperimentConfig], Encoded]  # (split, tokenizer, config)
    needs: tuple[str, ...] = ()  # optional packages (core.extras), checked before the model loads


def build_classifier(method: Method, cfg: ExperimentConfig, data: TaskData) -> tuple[nn.Module, Any]:
    method.use_unlabeled(data.unlabeled)
    return method.build_model(cfg.model, len(data.label_names), cfg.seed)


def encode_texts(split: Any, tokenizer: Any, cfg: ExperimentConfig) -> Encoded:

    return encode_split(split, tokenizer, cfg.model.max_length)


def build_generator(method: Method, cfg: ExperimentConfig, data: TaskData) -> tuple[nn.Module, Any]:

    return build_language_model(cfg.model, cfg.generation, cfg.seed)


def encode_generation(split: Any, tokenizer: Any, cfg: ExperimentConfig) -> Encoded:

    return encode_pairs(split["text"], split["target"], tokenizer, cfg.model.max_length, cfg.generation)


TASKS: dict[str, Task] = {
    "classification": Task(build_classifier, encode_texts),
    "generation": Task(build_generator, encode_generation, needs=("rouge_score",)),  # its metric
}


def task_for(cfg: ExperimentConfig, method: Method, data: TaskData) -> Task:
    """The task of `data`, checked against what the method and the run's options support."""
    if data.kind not in method.tasks:
        raise UserError(f"method '{method.name}' cannot train on {data.kind} data ('{data.name}'); "
                        f"methods for {data.kind}: {supporting(data.kind)}")
    if data.kind == "generation" and (cfg.attack.kind == "label_flip" or cfg.faults.noisy_clients > 0):
        raise UserError("attack.kind = 'label_flip' and faults.noisy_clients change class labels; "
                        "a generation dataset has none")
    task = TASKS[data.kind]
    extras.check(task.needs, f"{data.kind} data ('{data.name}')")
    return task


def supporting(kind: str) -> list[str]:

    return [n for n, m in METHODS.items() if kind in m.tasks]
