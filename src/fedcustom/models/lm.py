"""Causal language models as task models: the LM (wrapped by a PEFT method in place), its
response-only loss, and its evaluation (perplexity, ROUGE-L / exact match of greedy generations,
a few readable examples per round).

The wrapped transformer sits in `encoder`, the slot every method wraps or trains (the classifier
uses the same name), so prefix, LoRA, prompt and full tuning need no branch for decoders: the model
tells them its PEFT task type.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcustom.core.config import GenerationConfig, ModelConfig
from fedcustom.data.batching import Batch, Encoded, eval_batches
from fedcustom.data.pairs import IGNORE
from fedcustom.models.backbones import TaskModel, load_causal_lm
from fedcustom.models.evaluation import generation_scores


class LanguageModel(TaskModel):
    peft_task_type = "CAUSAL_LM"

    def __init__(self, lm: nn.Module, tokenizer: Any, gen: GenerationConfig) -> None:
        super().__init__()
        self.encoder = lm
        self.tokenizer = tokenizer
        self.gen = gen

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.encoder(input_ids=input_ids, attention_mask=attention_mask).logits
        # Prompt tuning prepends virtual tokens to the output too: keep the real positions.
        return logits[:, -input_ids.shape[1]:]

    def token_losses(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """Summed next-token cross-entropy over the response tokens, and their count."""
        logits = self(batch.input_ids, batch.attention_mask)[:, :-1].float()  # a bf16 base: fp32 loss
        targets = batch.labels[:, 1:]
        total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                reduction="sum")
        return total, int((targets != IGNORE).sum())

    def loss(self, batch: Batch) -> torch.Tensor:
        total, count = self.token_losses(batch)
        return total / max(count, 1)

    @torch.inference_mode()
    def generate_one(self, ids: torch.Tensor) -> str:
        out = self.encoder.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None],
                                    max_new_tokens=self.gen.max_new_tokens, do_sample=False,
                                    pad_token_id=self.tokenizer.pad_token_id,
                                    eos_token_id=self.tokenizer.eos_token_id)
        # PEFT's prompt tuning returns only the new tokens' ids after the virtual ones; others
        # return prompt + new tokens
        new = out[0, len(ids):] if out.shape[1] > len(ids) and torch.equal(out[0, :len(ids)], ids) else out[0]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    @torch.inference_mode()
    def evaluate(self, data: Encoded, batch_size: int) -> dict[str, Any]:

        self.eval()
        nll, count = 0.0, 0
        for batch in eval_batches(data, np.arange(len(data)), batch_size):
            total, n = self.token_losses(batch)
            nll, count = nll + total.item(), count + n
        metrics: dict[str, Any] = {"loss": nll / max(count, 1),
                                   "perplexity": math.exp(min(nll / max(count, 1), 50.0))}
        k = min(self.gen.eval_examples, len(data))
        if k == 0 or data.prompt_lengths is None or data.references is None:
            return metrics
        predictions = [self.generate_one(data.input_ids[i, : int(data.prompt_lengths[i])])
                       for i in range(k)]
        metrics.update(generation_scores(predictions, data.references[:k]))
        metrics["examples"] = [
            {"prompt": (data.prompts or [""] * k)[i][:300], "reference": data.references[i],
             "generated": predictions[i]} for i in range(min(self.gen.show_examples, k))]
        return metrics


def build_language_model(cfg: ModelConfig, gen: GenerationConfig, seed: int) -> tuple[LanguageModel, Any]:
    lm, tokenizer = load_causal_lm(cfg)
    lm.requires_grad_(False)
    torch.manual_seed(seed)  # nothing random here yet, but methods' inits follow the seed
    return LanguageModel(lm, tokenizer, gen), tokenizer
