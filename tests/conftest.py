"""Shared fixtures: a tiny randomly initialized BERT (2 layers, hidden 32) saved as a local model
directory with the packaged MiniLM tokenizer, and a small labelled CSV."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedcustom.config import ExperimentConfig, build
from fedcustom.models import resolve

POSITIVE = ["great", "fine", "lovely", "superb", "moving", "funny", "brilliant", "warm"]
NEGATIVE = ["dull", "awful", "boring", "flat", "tedious", "weak", "clumsy", "bland"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; runs that set their own threads restore it here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm")[0])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 short texts whose label is readable from their words."""
    rng = random.Random(0)
    lines = ["review,sentiment"]
    for i in range(120):
        label = "pos" if i % 2 else "neg"
        words = rng.choices(POSITIVE if i % 2 else NEGATIVE, k=rng.randint(3, 9))
        lines.append(f"the film was {' '.join(words)},{label}")
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_config(tiny_model_dir: Path, sentiment_csv: Path, tmp_path: Path):
    """A 2-client x 2-round experiment on the tiny model, built like a TOML file would be."""

    def make(**sections: dict) -> ExperimentConfig:
        raw = {
            "name": "tiny", "output_dir": str(tmp_path / "runs"), "threads": 1,
            "modes": ["federated", "centralized"],
            "model": {"name": str(tiny_model_dir), "max_length": 16},
            "data": {"dataset": str(sentiment_csv), "text_column": "review",
                     "label_column": "sentiment", "test_fraction": 0.25},
            "partition": {"scheme": "iid", "num_clients": 2},
            "method": {"name": "prefix", "num_virtual_tokens": 4},
            "train": {"batch_size": 8, "lr": 0.05},
            "federation": {"rounds": 2},
        }
        for key, value in sections.items():
            # a new method replaces the whole table; other sections are merged key by key
            merge = isinstance(value, dict) and not (key == "method" and "name" in value)
            raw[key] = {**raw.get(key, {}), **value} if merge else value
        return build(ExperimentConfig, raw)

    return make
