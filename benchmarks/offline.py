"""Models and data that need no download: for machines without a network (the GPU check) and for
tests that must not depend on the packaged models.

A word-level tokenizer is built in process from a fixed word list; model directories hold a
randomly initialized transformer of a given shape beside it; a labelled CSV holds texts whose label
is readable from their words. Everything is seeded, so two calls give the same files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

POSITIVE = ["great", "fine", "lovely", "superb", "moving", "funny", "brilliant", "warm"]
NEGATIVE = ["dull", "awful", "boring", "flat", "tedious", "weak", "clumsy", "bland"]
FILLER = ["the", "film", "was", "a", "and", "of", "story", "cast", "plot", "scene", "it", "very"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


@dataclass(frozen=True)
class EncoderShape:
    """A BERT-style encoder's size. BASE is BERT-base (110M parameters with a 30k vocabulary;
    smaller here, where the vocabulary is the word list), TINY the tests' and the dry run's."""

    layers: int
    hidden: int
    heads: int
    intermediate: int


BASE = EncoderShape(layers=12, hidden=768, heads=12, intermediate=3072)
TINY = EncoderShape(layers=2, hidden=64, heads=2, intermediate=128)


def tokenizer() -> Any:
    """A fast word-level tokenizer over SPECIAL + the word lists ([CLS] text [SEP], [PAD] = 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIAL, *FILLER, *POSITIVE, *NEGATIVE])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=512)


def write_encoder_dir(path: Path, shape: EncoderShape, seed: int = 0) -> Path:
    """A local model directory (config, random weights, tokenizer) that `model.name = PATH` loads."""
    from transformers import BertConfig, BertModel

    tok = tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                        max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    path.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_reviews_csv(path: Path, rows: int, words: tuple[int, int] = (3, 9), seed: int = 0) -> Path:
    """`rows` texts (columns text,label; label pos/neg, alternating) of `words` random words each
    (a range), the label's words mixed with filler."""
    rng = random.Random(seed)
    lines = ["text,label"]
    for i in range(rows):
        label = "pos" if i % 2 else "neg"
        n = rng.randint(*words)
        picked = [rng.choice(POSITIVE if i % 2 else NEGATIVE) if rng.random() < 0.3 else rng.choice(FILLER)
                  for _ in range(n)]
        lines.append(f"{' '.join(picked)},{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
