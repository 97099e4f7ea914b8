"""Soft prompt tuning (Lester et al., 2021) through PEFT: trainable embeddings prepended to the input.

The exchanged state is the virtual-token embedding matrix plus the task head. The encoder's
output then has `num_virtual_tokens` extra leading positions; the classifier pools over the real
tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peft import PromptTuningConfig, PromptTuningInit
from torch import nn

from fedcustom.core.config import check, opt
from fedcustom.core.registry import METHODS
from fedcustom.methods.base import Method


@dataclass(frozen=True)
class PromptOptions:
    num_virtual_tokens: int = opt(16, "soft prompt length: trainable input embeddings before the text")
    init: Literal["random", "text"] = opt(
        "random", "start from random vectors, or from the embeddings of init_text's tokens")
    init_text: str = opt("", "text whose token embeddings start the prompt (init 'text'); "
                             "repeated or cut to num_virtual_tokens")

    def __post_init__(self) -> None:
        check(self.num_virtual_tokens >= 1, "num_virtual_tokens", "an integer >= 1")
        check(self.init != "text" or bool(self.init_text.strip()), "init_text",
              "a non-empty text when init is 'text'")


@METHODS.register("prompt")
class Prompt(Method):
    summary = "prompt tuning: trainable soft-prompt embeddings prepended to the input (PEFT)"
    Options = PromptOptions
    options: PromptOptions
    tasks = frozenset({"classification", "generation"})

    def prepare(self, model: nn.Module) -> nn.Module:
        text = self.options.init == "text"
        peft_config = PromptTuningConfig(
            task_type=model.peft_task_type,
            num_virtual_tokens=self.options.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=self.options.init_text if text else None,
            # PEFT tokenizes init_text itself; the backbone's folder or hub id holds its tokenizer.
            tokenizer_name_or_path=model.encoder.config.name_or_path if text else None,
        )
        return self.wrap_peft(model, peft_config)
