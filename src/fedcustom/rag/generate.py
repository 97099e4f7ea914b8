"""Answering with retrieved context: prompt building and greedy generation with a causal LM.

Any causal LM that transformers loads works (the packaged `smollm2` by default, a local
directory, a hub id), optionally with a PEFT adapter trained by another method. A model with a
chat template gets the passages in a user turn; one without gets a plain-text prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from fedcustom.core.errors import UserError
from fedcustom.models.backbones import resolve
from fedcustom.rag.federation import Hit

SYSTEM = "Answer the question briefly. Use the context passages when they help."


def context_block(hits: Sequence[Hit], passage_words: int) -> str:
    """Numbered passages with their metadata; long passages are cut to keep the prompt short."""
    lines = []
    for n, hit in enumerate(hits, 1):
        meta = "".join(f" [{key}: {value}]" for key, value in sorted(hit.meta.items()))
        words = hit.text.split()
        text = " ".join(words[:passage_words]) + (" ..." if len(words) > passage_words else "")
        lines.append(f"({n}){meta} {text}")
    return "\n".join(lines)


class Generator:
    def __init__(self, name: str = "smollm2", adapter: str = "", max_new_tokens: int = 5,
                 passage_words: int = 60, answer_prefix: str = "") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging


        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.ERROR)
        source, kwargs = resolve(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load generator '{name}': {str(e).splitlines()[0]}") from None
        if adapter:
            model = self.with_adapter(model, adapter)
        self.model = model.eval()
        self.name, self.max_new_tokens, self.passage_words = name, max_new_tokens, passage_words
        # Text the answer starts with (e.g. "The topic is"): small models otherwise spend a short
        # token budget on a preamble before they name the answer.
        self.answer_prefix = answer_prefix

    @staticmethod
    def with_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"adapter directory {adapter} has no adapter_config.json (a PEFT adapter)")
        return PeftModel.from_pretrained(model, adapter)

    def prompt(self, question: str, hits: Sequence[Hit] = ()) -> str:
        user = question
        if hits:
            user = f"Context:\n{context_block(hits, self.passage_words)}\n\nQuestion: {question}"
        if self.tokenizer.chat_template:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + self.answer_prefix
        return f"{SYSTEM}\n\n{user}\nAnswer: {self.answer_prefix}".rstrip()

    def encode(self, text: str) -> dict[str, torch.Tensor]:
        # The chat template already holds the special tokens; plain prompts get the tokenizer's.
        specials = not self.tokenizer.chat_template
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=specials)
        # Only ids and mask: a BERT-style tokenizer also returns token_type_ids, which LMs reject.
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}

    @torch.inference_mode()
    def answer(self, question: str, hits: Sequence[Hit] = ()) -> str:
        """Greedy decoding: the same question and context always give the same answer."""
        inputs = self.encode(self.prompt(question, hits))
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=pad)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    @torch.inference_mode()
    def choose(self, question: str, options: Sequence[str], hits: Sequence[Hit] = ()) -> int:
        """The option the model finds most likely as its answer (sum of the option's token
        log-probabilities after the prompt): what it knows, apart from whether it follows the format."""
        ids = self.encode(self.prompt(question, hits))["input_ids"]
        first = torch.log_softmax(self.model(input_ids=ids).logits[0, -1], -1)
        sep = " " if self.answer_prefix and not self.answer_prefix.endswith(" ") else ""
        scores = []
        for option in options:
            tokens = self.tokenizer(sep + option, add_special_tokens=False, return_tensors="pt")["input_ids"]
            if tokens.shape[1] == 1:  # the common case: one forward pass serves every option
                scores.append(float(first[tokens[0, 0]]))
                continue
            logits = self.model(input_ids=torch.cat([ids, tokens], 1)).logits[0, ids.shape[1] - 1:-1]
            scores.append(float(torch.log_softmax(logits, -1).gather(1, tokens[0, :, None]).sum()))
        return int(torch.tensor(scores).argmax())
