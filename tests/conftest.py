"""Shared fixtures: a tiny randomly initialized BERT (2 layers, hidden 32) saved as a local model
directory with the packaged MiniLM tokenizer, and a small labelled CSV."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedcustom.core.config import ExperimentConfig, build
from fedcustom.models.backbones import resolve

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


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialized Llama-style causal LM (2 layers, hidden 32, grouped-query
    attention like SmolLM2) with the packaged SmolLM2 tokenizer and its chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2")[0])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def wordpiece_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialized Llama-style causal LM (2 layers, hidden 32) with MiniLM's
    WordPiece tokenizer ([SEP] ends a generation): for black-box scoring and RAG answers."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama-wordpiece")
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm")[0])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 prompt/response pairs (the response repeats the prompt's last words), in 3 groups."""
    import json

    rng = random.Random(0)
    words = POSITIVE + NEGATIVE
    rows = []
    for i in range(60):
        picked = rng.choices(words, k=rng.randint(3, 7))
        rows.append({"prompt": "echo the last two words: " + " ".join(picked),
                     "response": " ".join(picked[-2:]), "group": f"g{i % 3}"})
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_lm_config(tiny_llama_dir: Path, pairs_jsonl: Path, tmp_path: Path):
    """A 2-client x 2-round generation experiment on the tiny Llama model."""

    def make(**sections: dict) -> ExperimentConfig:
        raw = {
            "name": "tiny-lm", "output_dir": str(tmp_path / "runs"), "threads": 1,
            "modes": ["federated", "centralized"],
            "model": {"name": str(tiny_llama_dir), "max_length": 64},
            "data": {"dataset": str(pairs_jsonl), "label_column": "group", "test_fraction": 0.2},
            "partition": {"scheme": "iid", "num_clients": 2},
            "method": {"name": "prefix", "num_virtual_tokens": 4},
            "train": {"batch_size": 8, "lr": 0.01},
            "federation": {"rounds": 2},
            "generation": {"eval_examples": 3, "show_examples": 2, "max_new_tokens": 4},
        }
        for key, value in sections.items():
            merge = isinstance(value, dict) and not (key == "method" and "name" in value)
            raw[key] = {**raw.get(key, {}), **value} if merge else value
        return build(ExperimentConfig, raw)

    return make
