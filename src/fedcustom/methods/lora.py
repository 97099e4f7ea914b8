"""LoRA (Hu et al., 2021) through PEFT: trainable low-rank updates B @ A beside chosen linear layers.

The exchanged state is every lora_A/lora_B matrix plus the task head. B starts at zero, so the
prepared model computes exactly what the frozen base does until the first update.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig
from torch import nn

from fedcustom.core.config import check, opt
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.methods.base import Method


@dataclass(frozen=True)
class LoraOptions:
    rank: int = opt(8, "rank r of each low-rank update")
    alpha: float = opt(16.0, "scaling numerator: updates are scaled by alpha / rank")
    dropout: float = opt(0.0, "dropout on the LoRA branch's input while training")
    target_modules: tuple[str, ...] = opt(
        (), "names of the linear layers to adapt, e.g. ['query', 'value'] (empty: PEFT's default "
            "for the architecture)")

    def __post_init__(self) -> None:
        check(self.rank >= 1, "rank", "an integer >= 1")
        check(self.alpha > 0, "alpha", "a number > 0")
        check(0 <= self.dropout < 1, "dropout", "a number in [0, 1)")
        check(all(self.target_modules), "target_modules", "a list of non-empty module names")


@METHODS.register("lora")
class Lora(Method):
    summary = "LoRA: trainable low-rank updates to the transformer's linear layers (PEFT)"
    Options = LoraOptions
    options: LoraOptions
    tasks = frozenset({"classification", "generation"})

    def prepare(self, model: nn.Module) -> nn.Module:
        peft_config = LoraConfig(
            task_type=model.peft_task_type,
            r=self.options.rank,
            lora_alpha=self.options.alpha,
            lora_dropout=self.options.dropout,
            target_modules=list(self.options.target_modules) or None,
        )
        try:
            return self.wrap_peft(model, peft_config)
        except ValueError as e:  # no default target modules for this architecture, or no match
            raise UserError(f"method.target_modules: {str(e).splitlines()[0]}") from None
