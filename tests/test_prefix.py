"""Prefix-tuning state: exchange round-trip, identical outputs, frozen base, PEFT export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedcustom.core.config import ModelConfig, TrainConfig
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import METHODS
from fedcustom.data.batching import encode, eval_batches
from fedcustom.methods.prefix import PrefixOptions
from fedcustom.methods.training import train_local
from fedcustom.models.backbones import build_classifier

TEXTS = ["a warm and funny film", "dull", "the plot was tedious and the acting flat", "superb"]


def prepared(model_dir: Path, seed: int, projection: bool):
    model, tokenizer = build_classifier(ModelConfig(name=str(model_dir), max_length=16), 2, seed)
    method = METHODS.get("prefix")(PrefixOptions(num_virtual_tokens=4, projection=projection,
                                                 projection_hidden=8))
    method.prepare(model)
    return model, tokenizer, method


def logits(model, tokenizer) -> torch.Tensor:
    data = encode(TEXTS, [1, 0, 0, 1], tokenizer, 16)
    batch = next(eval_batches(data, np.arange(len(TEXTS)), 8))
    model.eval()
    with torch.inference_mode():
        return model(batch.input_ids, batch.attention_mask)


@pytest.mark.parametrize("projection", [False, True])
def test_state_round_trip_gives_identical_outputs(tiny_model_dir: Path, projection: bool) -> None:
    a, tokenizer, method = prepared(tiny_model_dir, seed=1, projection=projection)
    with torch.no_grad():  # move away from the initialization so equality means something
        for p in method.trainable(a).values():
            p.add_(torch.randn_like(p))
    state = method.get_state(a)
    assert any("transform" in k for k in state) == projection  # the MLP travels when it exists
    assert {"head.weight", "head.bias"} <= set(state)

    b, _, _ = prepared(tiny_model_dir, seed=2, projection=projection)
    assert not torch.allclose(logits(a, tokenizer), logits(b, tokenizer))
    method.set_state(b, deserialize(serialize(state)))
    assert torch.equal(logits(a, tokenizer), logits(b, tokenizer))


def test_training_changes_only_the_method_state(tiny_model_dir: Path) -> None:
    model, tokenizer, method = prepared(tiny_model_dir, seed=0, projection=True)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = method.get_state(model)
    data = encode(TEXTS * 4, [1, 0, 0, 1] * 4, tokenizer, 16)
    result = train_local(model, method, data, np.arange(16), TrainConfig(batch_size=4), seed=0)
    assert result.steps == 4 and result.examples == 16
    after = method.get_state(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("projection", [False, True])
def test_adapter_loads_with_plain_peft(tiny_model_dir: Path, tmp_path: Path,
                                       projection: bool) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    model, tokenizer, method = prepared(tiny_model_dir, seed=3, projection=projection)
    with torch.no_grad():
        for p in method.trainable(model).values():
            p.add_(torch.randn_like(p))
    method.save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_model_dir),
                                           tmp_path / "adapter")
    head = torch.nn.Linear(32, 2)
    head.load_state_dict(load_file(tmp_path / "adapter" / "head.safetensors"))
    data = encode(TEXTS, [1, 0, 0, 1], tokenizer, 16)
    batch = next(eval_batches(data, np.arange(len(TEXTS)), 8))
    peft_model.eval()
    with torch.inference_mode():
        hidden = peft_model(input_ids=batch.input_ids,
                            attention_mask=batch.attention_mask).last_hidden_state
        mask = batch.attention_mask.unsqueeze(-1).float()
        theirs = head((hidden * mask).sum(1) / mask.sum(1))
    assert torch.allclose(theirs, logits(model, tokenizer), atol=1e-5)
    # PEFT's saver keeps the projected prefix only: fine for inference, not for training on.
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert not any("transform" in k for k in saved)


def test_activation_init_equals_real_context_in_a_decoder(tmp_path: Path) -> None:
    """In a causal LM, a prefix initialized from text A's keys/values must act exactly like A
    itself placed before the input: that pins down the layout of PEFT's prefix tensor."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from fedcustom.methods.prefix import Prefix
    from fedcustom.models.backbones import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm")[0])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    LlamaModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    context = "a public sentence"
    n = len(tokenizer(context)["input_ids"])

    model, _ = build_classifier(ModelConfig(name=str(tmp_path)), 2, seed=0)
    Prefix(PrefixOptions(num_virtual_tokens=n, init="activations", init_text=context)).prepare(model)
    model.eval()
    a = tokenizer(context, return_tensors="pt")["input_ids"]
    b = tokenizer("the input itself", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        with_prefix = model.encoder(input_ids=b, attention_mask=torch.ones_like(b)).last_hidden_state
        plain = model.encoder.get_base_model()(input_ids=torch.cat([a, b], 1)).last_hidden_state
    assert torch.allclose(with_prefix, plain[:, n:], atol=1e-5)


def test_activation_init_rejects_projection() -> None:
    from fedcustom.core.config import ExperimentConfig, build
    from fedcustom.core.errors import UserError

    with pytest.raises(UserError, match="method.init"):
        build(ExperimentConfig, {"method": {"name": "prefix", "init": "activations",
                                            "projection": True}})
