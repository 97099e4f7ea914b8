"""The method contract on a causal LM (tiny random Llama): every method that trains generation
data round-trips its state, trains only its tensors, averages identical states to themselves,
runs 2 clients x 2 rounds with generation metrics, and exports an adapter that plain
transformers + peft load with identical logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from contract_checks import assert_training_changes_the_state_and_nothing_else
from helpers import updates

from fedcustom.core.config import GenerationConfig, ModelConfig, build
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import METHODS
from fedcustom.data.pairs import encode_pairs
from fedcustom.methods.base import Method
from fedcustom.models.lm import LanguageModel, build_language_model
from fedcustom.runs.experiment import run_experiment
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions

NAMES = [n for n in METHODS.names() if "generation" in METHODS.get(n).tasks]
PROMPTS = ["echo the last two words: great film", "echo the last two words: dull plot twist"]
RESPONSES = ["great film", "plot twist"]


def test_every_gradient_method_trains_generation() -> None:
    assert {"prefix", "lora", "prompt", "full"} <= set(NAMES)


def prepared(model_dir: Path, name: str, seed: int) -> tuple[LanguageModel, Method]:
    model, _ = build_language_model(ModelConfig(name=str(model_dir), max_length=32), GenerationConfig(), seed)
    torch.manual_seed(seed)  # PEFT's random initializations follow the seed
    method = METHODS.get(name)(build(METHODS.get(name).Options, {"num_virtual_tokens": 4}
                                     if "num_virtual_tokens" in METHODS.get(name).Options.__dataclass_fields__
                                     else {}))
    method.prepare(model)
    return model, method


def perturb(model: LanguageModel, method: Method) -> None:
    with torch.no_grad():
        for p in method.trainable(model).values():
            p.add_(0.1 * torch.randn_like(p))


def data(model: LanguageModel, repeat: int = 1):
    return encode_pairs(PROMPTS * repeat, RESPONSES * repeat, model.tokenizer, 64, model.gen)


def logits(model: LanguageModel) -> torch.Tensor:
    from fedcustom.data.batching import eval_batches

    b = next(eval_batches(data(model), np.arange(2), 8))
    model.eval()
    with torch.inference_mode():
        return model(b.input_ids, b.attention_mask)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_gives_identical_logits(tiny_llama_dir: Path, name: str) -> None:
    a, method = prepared(tiny_llama_dir, name, seed=1)
    perturb(a, method)
    b, _ = prepared(tiny_llama_dir, name, seed=2)
    assert not torch.allclose(logits(a), logits(b))
    method.set_state(b, deserialize(serialize(method.get_state(a))))
    assert torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("name", NAMES)
def test_training_changes_the_state_and_nothing_else(tiny_llama_dir: Path, name: str) -> None:
    model, method = prepared(tiny_llama_dir, name, seed=0)
    assert_training_changes_the_state_and_nothing_else(model, method, data(model, 4), 8)


@pytest.mark.parametrize("name", NAMES)
def test_fedavg_of_identical_states_is_the_identity(tiny_llama_dir: Path, name: str) -> None:
    model, method = prepared(tiny_llama_dir, name, seed=0)
    perturb(model, method)
    state = method.get_state(model)
    out = FedAvg(FedAvgOptions()).aggregate(state, updates([(state, 3), (dict(state), 7)]))
    assert all(torch.equal(out[k], v) for k, v in state.items())


@pytest.mark.parametrize("name", NAMES)
def test_two_clients_two_rounds_on_generation_data(tiny_lm_config, name: str) -> None:
    method = {"name": name, **({"num_virtual_tokens": 4} if name in ("prefix", "prompt") else {})}
    cfg = tiny_lm_config(method=method, modes=["federated"])
    path = run_experiment(cfg, log=lambda *_: None)["federated"].path
    records = [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records:
        assert np.isfinite(r["test_perplexity"]) and r["test_perplexity"] > 1
        assert 0 <= r["test_rougeL"] <= 1 and 0 <= r["test_exact_match"] <= 1
        assert [set(e) for e in r["test_examples"]] == [{"prompt", "reference", "generated"}] * 2
    assert records[2]["train_loss"] > 0 and records[1]["bytes_up"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_export_loads_with_plain_transformers_and_peft(tiny_llama_dir: Path, tmp_path: Path,
                                                        name: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, method = prepared(tiny_llama_dir, name, seed=3)
    perturb(model, method)
    folder = tmp_path / "export"
    method.save_adapter(model, folder)
    if name == "full":
        loaded = AutoModelForCausalLM.from_pretrained(folder)
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), folder)
    theirs = LanguageModel(loaded, model.tokenizer, model.gen)
    assert torch.allclose(logits(theirs), logits(model), atol=1e-5)
