"""What the black-box prompt methods share: a frozen causal LM used as a classifier through a
prompt template and label words (a verbalizer), and forward-only local scoring.

The model is only ever called, never trained: `prepare` turns every gradient off, and all work
runs under inference mode. The text the data pipeline encoded is wrapped at forward time by the
template's token ids (the text before and after `{text}`), so the encoding stays the shared one.
A label's score is the next-token logit of its word at the last prompt position; only the label
words' rows of the output embedding are multiplied, never the whole vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcustom.core.config import ModelConfig, check, opt
from fedcustom.core.device import autocast, model_device
from fedcustom.core.errors import UserError
from fedcustom.core.types import State
from fedcustom.data.batching import Encoded, eval_batches
from fedcustom.methods.base import Method
from fedcustom.models.backbones import load_causal_lm

SENTIMENT_TEMPLATES = (
    "Review: {text}\nSentiment:",
    "{text} Overall, the movie was",
    "Movie review: {text}\nIs this review positive or negative? Answer:",
    "{text} In summary, this film is",
    "Critic's verdict: {text} The film is",
    'Q: What is the sentiment of "{text}"?\nA:',
)
# One entry per label, in the dataset's label order (rotten-tomatoes: rotten, fresh); "|" separates
# the alternatives a search may pick from. The first alternative is the default.
SENTIMENT_WORDS = ("negative|bad|terrible|awful|boring", "positive|good|great|excellent|fun")


@dataclass(frozen=True)
class BlackBoxOptions:
    templates: tuple[str, ...] = opt(
        SENTIMENT_TEMPLATES, "prompt templates, each with one {text}; the first is the default")
    label_words: tuple[str, ...] = opt(
        SENTIMENT_WORDS, "per label (dataset order) its candidate words separated by '|'; a word's "
                         "first token is its score; the first word is the default")
    score_examples: int = opt(32, "examples a client scores per round, drawn from its data (0: all)")

    def __post_init__(self) -> None:
        check(bool(self.templates) and all(t.count("{text}") == 1 for t in self.templates), "templates",
              "a non-empty list of texts that each contain {text} once")
        check(len(self.label_words) >= 2 and all(
            w.strip() for words in self.label_words for w in words.split("|")), "label_words",
              "one non-empty '|'-separated word list per label (at least two labels)")
        check(self.score_examples >= 0, "score_examples", "an integer >= 0")


class VerbalizerLM(nn.Module):
    """A frozen causal LM as a classifier: template around the text, label words' next-token logits.

    `choice` is the current candidate: (template index, word index per label). `soft_prompt`, when
    set, is a [P, hidden] block of input embeddings placed before the template (black-box prompt
    tuning); it is a plain tensor, not a parameter, because nothing here is trained by gradients.
    """

    def __init__(self, lm: nn.Module, tokenizer: Any, templates: tuple[str, ...],
                 label_words: tuple[str, ...]) -> None:
        super().__init__()
        self.lm = lm
        self.pad_id = int(tokenizer.pad_token_id)
        # Encoders' tokenizers add [CLS]/[SEP] around the text: the template frames it instead.
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.templates = [self._template_ids(tokenizer, t) for t in templates]
        self.template_texts = list(templates)
        self.word_texts = [[w.strip() for w in words.split("|")] for words in label_words]
        self.word_ids = [[self._word_id(tokenizer, w) for w in words] for words in self.word_texts]
        self.choice = [0] * (1 + len(label_words))
        self.soft_prompt: torch.Tensor | None = None
        # The tensors the method exchanges, kept with the model between set_state and get_state.
        self.exchanged: dict[str, torch.Tensor] = {}

    @staticmethod
    def _template_ids(tokenizer: Any, template: str) -> tuple[list[int], list[int]]:
        def encode(part: str) -> list[int]:
            return tokenizer(part, add_special_tokens=False)["input_ids"] if part else []

        before, after = template.split("{text}")
        return encode(before), encode(after)

    @staticmethod
    def _word_id(tokenizer: Any, word: str) -> int:
        # The word follows the prompt after a space; a word of several tokens is scored by its first.
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError(f"method.label_words: '{word}' has no tokens in this model's vocabulary")
        return int(ids[0])

    def pool_sizes(self) -> list[int]:
        return [len(self.templates)] + [len(w) for w in self.word_ids]

    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    template: int) -> torch.Tensor:
        """[B, hidden]: the LM's final hidden state at the last prompt token of each example."""
        before, after = self.templates[template]
        input_ids, attention_mask = input_ids.cpu(), attention_mask.cpu()  # re-framed on the CPU
        keep = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        rows = [before + input_ids[i][keep[i]].tolist() + after for i in range(len(input_ids))]
        lengths = torch.tensor([len(r) for r in rows])
        ids = torch.full((len(rows), int(lengths.max())), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask = (torch.arange(ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()
        embedding = self.lm.get_input_embeddings()
        device = embedding.weight.device
        embeds = embedding(ids.to(device))
        if self.soft_prompt is not None:
            prompt = self.soft_prompt.to(device, embeds.dtype).unsqueeze(0).expand(len(rows), -1, -1)
            embeds = torch.cat([prompt, embeds], 1)
            mask = torch.cat([torch.ones(len(rows), prompt.shape[1], dtype=torch.long), mask], 1)
            lengths = lengths + prompt.shape[1]
        mask, lengths = mask.to(device), lengths.to(device)
        # Right padding is harmless to a causal LM: the last real token never attends to it.
        hidden = self.lm.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return hidden[torch.arange(len(rows)), lengths - 1]

    def label_logits(self, hidden: torch.Tensor, words: list[int]) -> torch.Tensor:
        """[B, labels] from last hidden states, with word `words[l]` for label l."""
        head = self.lm.get_output_embeddings()
        ids = torch.tensor([self.word_ids[label][w] for label, w in enumerate(words)],
                           device=head.weight.device)
        rows = head.weight[ids].to(hidden.device, hidden.dtype)
        logits = hidden @ rows.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[ids].to(hidden.device, hidden.dtype)
        return logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.label_logits(self.last_hidden(input_ids, attention_mask, self.choice[0]),
                                 self.choice[1:])

    def describe(self, choice: list[int]) -> dict[str, Any]:
        """The human-readable prompt of a candidate: its template and one word per label."""
        return {"template": self.template_texts[choice[0]],
                "label_words": [self.word_texts[label][w] for label, w in enumerate(choice[1:])]}


def build_verbalizer(cfg: ModelConfig, options: BlackBoxOptions, num_labels: int) -> tuple[VerbalizerLM, Any]:
    """The configured causal LM as a VerbalizerLM over the options' templates and label words."""
    if len(options.label_words) != num_labels:
        raise UserError(f"method.label_words has {len(options.label_words)} entries; the data "
                        f"has {num_labels} labels (one '|'-separated word list per label)")
    lm, tokenizer = load_causal_lm(cfg)
    return VerbalizerLM(lm, tokenizer, options.templates, options.label_words), tokenizer


def prompt_embeddings(model: VerbalizerLM, tokenizer: Any, text: str, length: int) -> torch.Tensor:
    """[length, hidden]: the input embeddings of `text`'s tokens, repeated or cut to `length` (the
    soft prompts' starting point)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids * length)[:length]
    return model.lm.get_input_embeddings().weight.detach()[ids].clone()


class BlackBoxMethod(Method):
    """Forward-only methods on a VerbalizerLM; subclasses say what is searched and exchanged."""

    options: BlackBoxOptions

    def build_model(self, cfg: ModelConfig, num_labels: int, seed: int) -> tuple[nn.Module, Any]:
        return build_verbalizer(cfg, self.options, num_labels)

    def prepare(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)  # black box: the model is only called
        return model

    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {}

    def get_state(self, model: nn.Module) -> State:
        return {k: v.clone() for k, v in model.exchanged.items()}

    def check_keys(self, state: State, expected: set[str]) -> None:
        if set(state) != expected:
            raise UserError(f"{self.name} state must hold {sorted(expected)}, got {sorted(state)}")

    def score_rows(self, rows: np.ndarray, seed: int) -> np.ndarray:
        """The client's scoring sample for this round: fixed by the client's seed."""
        n = self.options.score_examples
        if n == 0 or n >= len(rows):
            return np.sort(rows)
        return np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))

    def export(self, model: VerbalizerLM, path: Path, extra: dict[str, Any]) -> None:
        """prompt.json: the chosen prompt in words (the clients' forward passes are in the round
        records, counted where the clients ran)."""
        path.mkdir(parents=True, exist_ok=True)
        record = {**model.describe(model.choice), **extra}
        (path / "prompt.json").write_text(json.dumps(record, indent=2) + "\n")


@torch.inference_mode()
def hidden_states(model: VerbalizerLM, data: Encoded, rows: np.ndarray, template: int,
                  batch_size: int, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states of `rows` under `template` (fp32, on the CPU), with their labels (one
    forward per example, under bf16 autocast for precision 'bf16')."""
    hidden, labels = [], []
    device = model_device(model)
    for batch in eval_batches(data, rows, batch_size):
        with autocast(device, precision):
            states = model.last_hidden(batch.input_ids, batch.attention_mask, template)
        hidden.append(states.float().cpu())
        labels.append(batch.labels)
    return torch.cat(hidden), torch.cat(labels)


def accuracy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    return float((logits.argmax(-1) == labels).float().mean()), float(F.cross_entropy(logits, labels))
