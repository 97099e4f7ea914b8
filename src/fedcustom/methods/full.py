"""Full fine-tuning: every encoder weight the task output depends on, plus the head, is trained
and exchanged. The upper bound the parameter-efficient methods are measured against.

Weights the output never touches (BERT's pooler: the classifier pools the token states itself)
would travel every round unchanged, so they stay frozen; a probe backward pass finds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedcustom.core.registry import METHODS
from fedcustom.methods.base import Method


@dataclass(frozen=True)
class FullOptions:
    """Full fine-tuning has no options of its own; learning rates live in [train]."""


def unused_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that get no gradient from the model's output, found by one tiny backward pass."""
    modes = {m: m.training for m in model.modules()}
    model.eval()  # no dropout: the probe consumes no random numbers
    device = next(model.parameters()).device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    model(ids, torch.ones_like(ids)).sum().backward()
    unused = [p for p in model.parameters() if p.grad is None]
    model.zero_grad(set_to_none=True)
    for module, training in modes.items():
        module.train(training)
    return unused


@METHODS.register("full")
class Full(Method):
    summary = "full fine-tuning: every encoder weight the output uses, and the head, trained and exchanged"
    Options = FullOptions
    options: FullOptions
    tasks = frozenset({"classification", "generation"})

    @classmethod
    def trains_base(cls, options: object) -> bool:
        return True

    def prepare(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(True)
        for param in unused_parameters(model):
            param.requires_grad_(False)
        return model

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        """The whole encoder in transformers' format (loads with AutoModel), plus the head."""
        path.mkdir(parents=True, exist_ok=True)
        model.encoder.save_pretrained(path)
        super().save_adapter(model, path)
