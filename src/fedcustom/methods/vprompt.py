"""White-box soft-prompt tuning through the black-box methods' verbalizer: the white-box
counterpart of bbpt, on the same scoring.

The model is the same VerbalizerLM (a frozen causal LM, the default template around the text, the
label words' next-token logits at the last position); the soft prompt, P input embeddings before
the template starting from `init_text`'s token embeddings as bbpt's p0, is an ordinary trainable
tensor. Clients train it with the shared gradient loop (cross-entropy over the label-word logits)
and the server averages it (FedAvg). bbpt searches p0 + A z with forward passes only and exchanges
z; this trains all of p with backpropagation and exchanges p, so the two differ in how the prompt
is found and in what travels, not in how an example is scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from fedcustom.core.config import ModelConfig, check, opt
from fedcustom.core.registry import METHODS
from fedcustom.methods.base import Method
from fedcustom.methods.blackbox import BlackBoxOptions, build_verbalizer, prompt_embeddings


@dataclass(frozen=True)
class VerbalizerPromptOptions(BlackBoxOptions):
    num_virtual_tokens: int = opt(5, "soft prompt length P: trainable input embeddings before the template")
    init_text: str = opt("Decide whether the movie review is positive or negative.",
                         "text whose token embeddings start the prompt (repeated or cut to P)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_virtual_tokens >= 1, "num_virtual_tokens", "an integer >= 1")
        check(bool(self.init_text.strip()), "init_text", "a non-empty text")


@METHODS.register("vprompt")
class VerbalizerPrompt(Method):
    summary = "white-box soft prompt through the black-box verbalizer (label-word logits), by gradients"
    Options = VerbalizerPromptOptions
    options: VerbalizerPromptOptions

    def build_model(self, cfg: ModelConfig, num_labels: int, seed: int) -> tuple[nn.Module, Any]:
        model, tokenizer = build_verbalizer(cfg, self.options, num_labels)
        model.prompt_init = prompt_embeddings(model, tokenizer, self.options.init_text,
                                              self.options.num_virtual_tokens)
        return model, tokenizer

    def prepare(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        model.soft_prompt = nn.Parameter(model.prompt_init.clone())  # the only trainable tensor
        return model

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        """soft_prompt.safetensors ([P, hidden]) and prompt.json (the template and label words)."""
        path.mkdir(parents=True, exist_ok=True)
        prompt = model.soft_prompt.detach().cpu().contiguous()
        save_file({"soft_prompt": prompt}, path / "soft_prompt.safetensors")
        (path / "prompt.json").write_text(json.dumps(model.describe(model.choice), indent=2) + "\n")
