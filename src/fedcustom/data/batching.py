"""Tokenize once, then cut length-bucketed batches with dynamic padding.

Every example is tokenized a single time into one padded matrix; a batch is a row selection
trimmed to its longest member, so short snippets never pay for `max_length`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

BUCKET_BATCHES = 32  # batches per sorting window: enough to group lengths, small enough to mix


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [N, max_length], right-padded
    lengths: torch.Tensor  # [N]
    # [N] class ids; or, for generation, [N, max_length] next-token targets: the input ids on
    # response tokens and -100 (ignored by the loss) on prompt and padding
    labels: torch.Tensor
    # generation only: where each prompt ends, and the texts shown next to generated examples
    prompt_lengths: torch.Tensor | None = None
    prompts: list[str] | None = None
    references: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Batch:
        """The batch on `device` (the same tensors when they are already there)."""
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def encode(texts: Sequence[str], labels: Sequence[int], tokenizer: Any, max_length: int) -> Encoded:
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    matrix = torch.full((len(ids), max(int(lengths.max()), 1)), tokenizer.pad_token_id)
    for row, x in enumerate(ids):
        matrix[row, : len(x)] = torch.tensor(x)
    return Encoded(matrix, lengths, torch.tensor(list(labels), dtype=torch.long))


def encode_split(split: Any, tokenizer: Any, max_length: int) -> Encoded:
    """A classification split's token rows (its `text` and `label` columns)."""
    return encode(split["text"], split["label"], tokenizer, max_length)


def take(data: Encoded, rows: np.ndarray) -> Batch:
    index = torch.from_numpy(rows)
    lengths = data.lengths[index]
    width = int(lengths.max())
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    labels = data.labels[index]
    return Batch(data.input_ids[index, :width], mask.long(),
                 labels[:, :width] if labels.dim() == 2 else labels)


def train_batches(
    data: Encoded, rows: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[Batch]:
    """Shuffled batches of similar length: shuffle, sort within windows, shuffle batch order."""
    for batch in batch_rows(data, rows, batch_size, rng):
        yield take(data, batch)


def train_steps(
    data: Encoded, rows: np.ndarray, batch_size: int, accumulation: int, rng: np.random.Generator
) -> Iterator[list[Batch]]:
    """An optimizer step's micro-batches: the rows of one train_batches batch of batch_size *
    accumulation examples (the same rows, in the same order, for the same rng), cut into pieces of
    batch_size, each trimmed to its own longest member."""
    for step in batch_rows(data, rows, batch_size * accumulation, rng):
        yield [take(data, step[i : i + batch_size]) for i in range(0, len(step), batch_size)]


def batch_rows(data: Encoded, rows: np.ndarray, batch_size: int,
               rng: np.random.Generator) -> list[np.ndarray]:
    """The rows of each shuffled batch (train_batches), in the order they are trained."""
    rows = rng.permutation(rows)
    lengths = data.lengths.numpy()
    window = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(rows), window):
        chunk = rows[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[b] for b in rng.permutation(len(batches))]


def eval_batches(data: Encoded, rows: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """All rows sorted by length, so padding is minimal; order does not matter for metrics."""
    rows = rows[np.argsort(data.lengths.numpy()[rows], kind="stable")]
    for i in range(0, len(rows), batch_size):
        yield take(data, rows[i : i + batch_size])
