"""Prompt/response pairs -> token ids for a causal LM, with a label mask for response-only loss.

The prompt is wrapped in the model's chat template when it has one (and generation.chat_template
is on), so an instruction-tuned model sees its usual format; without a template the prompt is
followed by a newline. The response ends with the end-of-sequence token, so the model learns to
stop. Truncation cuts the prompt's content (never the template around it, which holds the
assistant header the response must follow) and keeps at most max_response_tokens of the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedcustom.core.config import GenerationConfig
from fedcustom.core.errors import UserError
from fedcustom.data.batching import Encoded

IGNORE = -100  # the label that torch's cross-entropy skips
PLACEHOLDER = "\x00CONTENT\x00"


def uses_template(tokenizer: Any, gen: GenerationConfig) -> bool:
    return gen.chat_template and bool(getattr(tokenizer, "chat_template", None))


def frame(tokenizer: Any, gen: GenerationConfig) -> tuple[list[int], list[int]]:
    """Token ids before and after a prompt's content."""
    if not uses_template(tokenizer, gen):
        # a plain LM: its own start token if it adds one, the prompt, then a newline
        start = tokenizer("", add_special_tokens=True)["input_ids"]
        return list(start), tokenizer("\n", add_special_tokens=False)["input_ids"]
    system = [{"role": "system", "content": gen.system_prompt}] if gen.system_prompt else []
    text = tokenizer.apply_chat_template([*system, {"role": "user", "content": PLACEHOLDER}],
                                         add_generation_prompt=True, tokenize=False)
    before, _, after = text.partition(PLACEHOLDER)
    return (tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(after, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, prompt: str, budget: int, gen: GenerationConfig,
               parts: tuple[list[int], list[int]] | None = None) -> list[int]:
    """The prompt as the model reads it before a response, at most `budget` tokens."""
    before, after = parts or frame(tokenizer, gen)
    room = budget - len(before) - len(after)
    if room < 1:
        raise UserError(f"model.max_length leaves {budget} prompt tokens, fewer than the "
                        f"{len(before) + len(after) + 1} the chat template needs; raise model.max_length")
    content = tokenizer(prompt, add_special_tokens=False)["input_ids"][:room]
    return before + content + after


def response_ids(tokenizer: Any, response: str, gen: GenerationConfig) -> list[int]:
    ids = tokenizer(response, add_special_tokens=False)["input_ids"][: gen.max_response_tokens - 1]
    return ids + [tokenizer.eos_token_id]


def encode_pairs(prompts: Sequence[str], responses: Sequence[str], tokenizer: Any, max_length: int,
                 gen: GenerationConfig) -> Encoded:
    if tokenizer.eos_token_id is None:
        raise UserError("the model's tokenizer has no end-of-sequence token; generation needs one")
    parts = frame(tokenizer, gen)
    rows, starts = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        answer = response_ids(tokenizer, response, gen)
        question = prompt_ids(tokenizer, prompt, max_length - len(answer), gen, parts)
        rows.append(question + answer)
        starts.append(len(question))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, start : len(row)] = ids[i, start : len(row)]
    return Encoded(ids, torch.tensor([len(r) for r in rows]), labels,
                   prompt_lengths=torch.tensor(starts), prompts=list(prompts),
                   references=list(responses))
