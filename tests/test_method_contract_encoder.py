"""The gradient methods' contract on a tiny encoder, beyond tests/test_method_contract.py:
identical outputs after a state round-trip, every exchanged tensor moves in training and the
frozen base does not, identity aggregation, a 2-client x 2-round run, a loadable export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from contract_checks import assert_training_changes_the_state_and_nothing_else
from helpers import updates
from safetensors.torch import load_file

from fedcustom.core.config import ConfigError, ExperimentConfig, ModelConfig, build
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import METHODS
from fedcustom.methods.base import Method
from fedcustom.models.backbones import Classifier, build_classifier
from fedcustom.runs.experiment import run_experiment
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions

TEXTS = ["a warm and funny film", "dull", "the plot was tedious and the acting flat", "superb"]
LABELS = [1, 0, 0, 1]
# the contract of gradient methods on the encoder classifier: those exchanging logits or scores,
# training forward-only (their own fit) or building another model (vprompt: a causal LM's
# verbalizer, checked on a tiny Llama in test_method_contract.py and test_blackbox.py) have their
# own suites; hetlora's fit keeps the client's rank, then runs the shared loop
NAMES = [n for n in METHODS.names()
         if (METHODS.get(n).exchange == "weights" and METHODS.get(n).fit is Method.fit
             and METHODS.get(n).build_model is Method.build_model) or n == "hetlora"]


def prepared(model_dir: Path, name: str, seed: int) -> tuple[Classifier, object, Method]:
    model, tokenizer = build_classifier(ModelConfig(name=str(model_dir), max_length=16), 2, seed)
    method = METHODS.get(name)(build(METHODS.get(name).Options, {}))
    method.prepare(model)
    return model, tokenizer, method


def perturb(model: Classifier, method: Method) -> None:
    """Move away from the initialization (LoRA's B is zero), so equality means something."""
    with torch.no_grad():
        for p in method.trainable(model).values():
            p.add_(0.1 * torch.randn_like(p))


def batch(tokenizer: object, texts: list[str] = TEXTS):
    from fedcustom.data.batching import encode, eval_batches

    data = encode(texts, LABELS, tokenizer, 16)
    return next(eval_batches(data, np.arange(len(texts)), 8))


def logits(model: Classifier, tokenizer: object) -> torch.Tensor:
    b = batch(tokenizer)
    model.eval()
    with torch.inference_mode():
        return model(b.input_ids, b.attention_mask)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_gives_identical_outputs(tiny_model_dir: Path, name: str) -> None:
    a, tokenizer, method = prepared(tiny_model_dir, name, seed=1)
    perturb(a, method)
    state = method.get_state(a)
    assert {"head.weight", "head.bias"} <= set(state)

    b, _, _ = prepared(tiny_model_dir, name, seed=2)
    assert not torch.allclose(logits(a, tokenizer), logits(b, tokenizer))
    method.set_state(b, deserialize(serialize(state)))
    assert torch.equal(logits(a, tokenizer), logits(b, tokenizer))


@pytest.mark.parametrize("name", NAMES)
def test_training_changes_the_state_and_nothing_else(tiny_model_dir: Path, name: str) -> None:
    from fedcustom.data.batching import encode

    model, tokenizer, method = prepared(tiny_model_dir, name, seed=0)
    data = encode(TEXTS * 4, LABELS * 4, tokenizer, 16)
    assert_training_changes_the_state_and_nothing_else(model, method, data, 16)


@pytest.mark.parametrize("name", NAMES)
def test_fedavg_of_identical_states_is_the_identity(tiny_model_dir: Path, name: str) -> None:
    model, _, method = prepared(tiny_model_dir, name, seed=0)
    perturb(model, method)
    state = method.get_state(model)
    out = FedAvg(FedAvgOptions()).aggregate(state, updates([(state, 3), (dict(state), 7)]))
    assert set(out) == set(state)
    assert all(out[k].dtype == v.dtype and torch.equal(out[k], v) for k, v in state.items())


@pytest.mark.parametrize("name", NAMES)
def test_two_clients_two_rounds(tiny_config, name: str) -> None:
    # A mapping that is not a dict replaces tiny_config's method table instead of merging into it
    # (its prefix options are unknown keys to other methods).
    cfg = tiny_config(method={"name": name}, modes=["federated"])
    path = run_experiment(cfg, log=lambda *_: None)["federated"].path
    records = [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    payload = len(serialize(load_file(path / "state.safetensors")))  # measured, not computed
    for r in records[1:]:
        assert r["clients"] == 2
        assert r["bytes_up"] == r["bytes_down"] == payload * 2
        assert np.isfinite(r["train_loss"]) and 0 <= r["test_accuracy"] <= 1


@pytest.mark.parametrize("name", NAMES)
def test_export_loads_outside_fedcustom(tiny_model_dir: Path, tmp_path: Path, name: str) -> None:
    """A PEFT adapter loads onto the plain base model; a full model loads on its own."""
    from peft import PeftModel
    from transformers import AutoModel

    model, tokenizer, method = prepared(tiny_model_dir, name, seed=3)
    perturb(model, method)
    folder = tmp_path / "export"
    method.save_adapter(model, folder)
    if (folder / "adapter_config.json").is_file():
        encoder = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_model_dir), folder)
    else:
        encoder = AutoModel.from_pretrained(folder)
    loaded = Classifier(encoder, 32, 2, "mean")
    loaded.head.load_state_dict(load_file(folder / "head.safetensors"))
    loaded.eval()
    model.eval()
    b = batch(tokenizer)
    with torch.inference_mode():
        ours = model.encoder(input_ids=b.input_ids, attention_mask=b.attention_mask)
        theirs = encoder(input_ids=b.input_ids, attention_mask=b.attention_mask)
    assert torch.allclose(ours.last_hidden_state, theirs.last_hidden_state, atol=1e-5)
    assert torch.allclose(logits(loaded, tokenizer), logits(model, tokenizer), atol=1e-5)


def test_trainable_parameter_counts_are_ordered(tiny_model_dir: Path) -> None:
    counts = {}
    for name in ("prompt", "lora", "prefix", "full"):
        model, _, method = prepared(tiny_model_dir, name, seed=0)
        counts[name] = sum(v.numel() for v in method.get_state(model).values())
    assert counts["prompt"] < counts["full"]
    assert counts["lora"] < counts["full"]
    assert counts["prefix"] < counts["full"]


def test_prompt_pools_over_the_real_tokens_only(tiny_model_dir: Path) -> None:
    """Virtual tokens lengthen the encoder output; padding must still be masked out."""
    model, tokenizer, method = prepared(tiny_model_dir, "prompt", seed=0)
    model.eval()
    one = batch(tokenizer, ["dull"])
    padded = batch(tokenizer, ["dull", "the plot was tedious and the acting flat"])
    with torch.inference_mode():
        alone = model(one.input_ids, one.attention_mask)
        together = model(padded.input_ids, padded.attention_mask)
    assert torch.allclose(alone[0], together[0], atol=1e-5)


def test_prompt_text_initialization(tiny_model_dir: Path) -> None:
    from fedcustom.methods.prompt import PromptOptions

    model, _ = build_classifier(ModelConfig(name=str(tiny_model_dir)), 2, 0)
    method = METHODS.get("prompt")(PromptOptions(num_virtual_tokens=5, init="text",
                                                 init_text="positive or negative"))
    method.prepare(model)
    prompt = next(v for k, v in method.get_state(model).items() if "prompt" in k)
    words = model.encoder.word_embeddings.weight
    assert any(torch.equal(prompt[0], row) for row in words)  # [CLS]'s embedding starts it


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"name": "lora", "rank": 0}, "method.rank = 0: expected an integer >= 1"),
        ({"name": "lora", "alpha": 0}, "method.alpha = 0.0: expected a number > 0"),
        ({"name": "lora", "dropout": 1.0}, "method.dropout = 1.0: expected a number in [0, 1)"),
        ({"name": "lora", "target_modules": "query"}, "method.target_modules = 'query'"),
        ({"name": "lora", "target_modules": [""]}, "method.target_modules = ('',)"),
        ({"name": "prompt", "num_virtual_tokens": 0}, "method.num_virtual_tokens = 0"),
        ({"name": "prompt", "init": "vocab"}, "method.init = 'vocab': expected one of"),
        ({"name": "prompt", "init": "text"}, "method.init_text = '': expected a non-empty text"),
        ({"name": "full", "rank": 8}, "unknown key 'method.rank'"),
    ],
)
def test_bad_method_options_name_the_key(method: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(ExperimentConfig, {"method": method})
    assert message in str(err.value)


def test_good_method_options_build() -> None:
    cfg = build(ExperimentConfig, {"method": {"name": "lora", "rank": 4,
                                              "target_modules": ["query", "key"]}})
    assert cfg.method.options.target_modules == ("query", "key")


def test_lora_without_matching_modules_is_a_user_error(tiny_model_dir: Path) -> None:
    from fedcustom.core.errors import UserError
    from fedcustom.methods.lora import LoraOptions

    model, _ = build_classifier(ModelConfig(name=str(tiny_model_dir)), 2, 0)
    with pytest.raises(UserError, match="method.target_modules"):
        METHODS.get("lora")(LoraOptions(target_modules=("q_proj",))).prepare(model)
