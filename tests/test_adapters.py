"""Exported adapters are PEFT-native: with `model.pooling = "pooler"` a run's adapter folder loads
with PEFT's own AutoPeftModelForSequenceClassification and predicts exactly what the run measured;
every exported adapter names its base model portably (a packaged model's hub id)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import AutoPeftModelForSequenceClassification
from safetensors.torch import load_file
from transformers import AutoTokenizer

import fedcustom
from fedcustom.core.config import to_dict
from fedcustom.core.registry import METHODS
from fedcustom.data import load_task_data
from fedcustom.federation.rounds import new_best
from fedcustom.methods.base import name_base_model
from fedcustom.models.backbones import portable_name
from fedcustom.runs.experiment import resume_experiment


@torch.inference_mode()
def peft_logits(adapter: Path, texts: list[str], num_labels: int,
                max_length: int) -> tuple[torch.Tensor, dict]:
    """Logits from PEFT's auto class alone (no fedcustom code between the folder and the logits),
    and the batch they were computed on."""
    model = AutoPeftModelForSequenceClassification.from_pretrained(adapter, num_labels=num_labels).eval()
    tokenizer = AutoTokenizer.from_pretrained(model.peft_config["default"].base_model_name_or_path)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return model(**batch).logits, batch


@pytest.mark.parametrize("method", [
    {"name": "prefix", "num_virtual_tokens": 4},
    {"name": "lora", "rank": 2},
    {"name": "prompt", "num_virtual_tokens": 4},
])
def test_a_pooler_adapter_loads_with_auto_peft_and_predicts_what_the_run_measured(
        method, tiny_config) -> None:
    cfg = tiny_config(method=method, model={"pooling": "pooler"}, train={"lr": 0.1})
    result = fedcustom.run(to_dict(cfg), modes=["federated"])
    adapter = result.run_dir / "federated" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    assert not (adapter / "head.safetensors").exists()  # the classifier is among PEFT's weights
    assert (adapter / "README.md").is_file()  # PEFT's model card
    data = load_task_data(cfg.data)
    texts = list(data.test["text"])
    logits, batch = peft_logits(adapter, texts, len(data.label_names), cfg.model.max_length)
    trained = result.model("federated")
    with torch.inference_mode():
        torch.testing.assert_close(logits, trained.module(batch["input_ids"], batch["attention_mask"]))
    labels = logits.argmax(-1).tolist()
    assert [data.label_names[i] for i in labels] == trained.predict(texts)
    measured = sum(int(p == y) for p, y in zip(labels, data.test["label"], strict=True)) / len(texts)
    assert measured == result.final()["federated"]


def test_adapters_name_their_base_model_portably(tiny_config, tmp_path: Path) -> None:
    assert portable_name("minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_name("/models/mine") == "/models/mine"
    result = fedcustom.run(to_dict(tiny_config()), modes=["federated"])  # mean pooling: encoder + head
    adapter = result.run_dir / "federated" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors"} <= {
        p.name for p in adapter.iterdir()}
    name_base_model(adapter, "sentence-transformers/all-MiniLM-L6-v2")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert ModelCard.load(adapter / "README.md").data.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_save_every_writes_snapshots_and_the_last_is_the_final_adapter(tiny_config) -> None:
    cfg = tiny_config(federation={"save_every": 1}, method={"name": "lora", "rank": 2})
    result = fedcustom.run(to_dict(cfg))
    for mode in ("federated", "centralized"):
        snapshots = result.run_dir / mode / "snapshots"
        assert sorted(p.name for p in snapshots.iterdir()) == ["round-0001", "round-0002"]
        weights = {p.name: load_file(p / "adapter_model.safetensors") for p in snapshots.iterdir()}
        final = load_file(result.run_dir / mode / "adapter" / "adapter_model.safetensors")
        assert final.keys() == weights["round-0002"].keys()
        assert all(torch.equal(final[k], weights["round-0002"][k]) for k in final)
        assert not all(torch.equal(final[k], weights["round-0001"][k]) for k in final)


def test_save_best_exports_the_round_of_best_validation_accuracy(tiny_config) -> None:
    cfg = tiny_config(federation={"save_every": 1, "rounds": 3}, method={"name": "lora", "rank": 2},
                      data={"validation_fraction": 0.25}, train={"precision": "fp32"})
    result = fedcustom.run(to_dict(cfg))
    for mode in ("federated", "centralized"):
        folder = result.run_dir / mode
        vals = [r["val_accuracy"] for r in result.records[mode]]
        chosen = json.loads((folder / "best" / "round.json").read_text())
        assert chosen["round"] == vals.index(max(vals))  # the earliest best, round 0 included
        assert chosen["val_accuracy"] == max(vals)
        exported = load_file(folder / "best" / "adapter_model.safetensors")
        if chosen["round"]:  # the same weights as that round's snapshot
            snapshot = load_file(folder / "snapshots" / f"round-{chosen['round']:04d}"
                                 / "adapter_model.safetensors")
            assert all(torch.equal(exported[k], snapshot[k]) for k in snapshot)
    best = result.model("federated", best=True).module  # holds the best round's exchanged state
    raw = load_file(result.run_dir / "federated" / "best" / "state.safetensors")
    loaded = METHODS.get("lora")(cfg.method.options).get_state(best)
    assert loaded.keys() == raw.keys() and all(torch.equal(loaded[k], raw[k]) for k in raw)

    # A kill after a best round's checkpoint but before its export: resuming exports it. Here the
    # centralized run's last round (3) is its best (validation 0.5, 0.5, 0.5, 1.0 in fp32).
    assert new_best(result.records["centralized"])
    folder = result.run_dir / "centralized"
    before = load_file(folder / "best" / "state.safetensors")
    shutil.rmtree(folder / "best")
    resume_experiment(result.run_dir, log=lambda *_: None)
    assert json.loads((folder / "best" / "round.json").read_text())["round"] == 3
    after = load_file(folder / "best" / "state.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
