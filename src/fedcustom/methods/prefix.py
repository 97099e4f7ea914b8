"""Prefix-tuning (Li & Liang, 2021) through PEFT: trainable key/value vectors at every layer.

The exchanged state is the raw trainable parameters: the prefix embedding, the reparameterization
MLP when `projection` is on, and the task head. PEFT's own saver writes the MLP's *output*
instead of its weights, which loads for inference but cannot resume training; our state can.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import PrefixTuningConfig, TaskType, get_peft_model
from torch import nn

from fedcustom.config import check, opt
from fedcustom.methods.base import METHODS, Method


@dataclass(frozen=True)
class PrefixOptions:
    num_virtual_tokens: int = opt(16, "prefix length: virtual key/value positions per layer")
    projection: bool = opt(False, "reparameterize the prefix through a 2-layer MLP")
    projection_hidden: int = opt(128, "hidden width of the reparameterization MLP")

    def __post_init__(self) -> None:
        check(self.num_virtual_tokens >= 1, "num_virtual_tokens", "an integer >= 1")
        check(self.projection_hidden >= 1, "projection_hidden", "an integer >= 1")


@METHODS.register("prefix")
class Prefix(Method):
    name = "prefix"
    summary = "prefix-tuning: trainable key/value prefixes at every layer (PEFT)"
    Options = PrefixOptions
    options: PrefixOptions

    def prepare(self, model: nn.Module) -> nn.Module:
        peft_config = PrefixTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=self.options.num_virtual_tokens,
            prefix_projection=self.options.projection,
            encoder_hidden_size=self.options.projection_hidden,
        )
        model.encoder = get_peft_model(model.encoder, peft_config)
        model.head.requires_grad_(True)
        return model
