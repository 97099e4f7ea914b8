"""Options for large models: the base's dtype, gradient checkpointing, gradient accumulation,
4/8-bit quantization (bitsandbytes) and peak accelerator memory, on the tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedcustom.core.config import ConfigError, GenerationConfig, ModelConfig, TrainConfig, load_config
from fedcustom.core.device import check_quantization, peak_memory_mb
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.data.batching import Encoded, encode, train_batches, train_steps
from fedcustom.data.pairs import encode_pairs
from fedcustom.methods.base import Method
from fedcustom.methods.training import train_local
from fedcustom.models.lm import build_language_model

METHOD_OPTIONS = {"prefix": {"num_virtual_tokens": 3}, "prompt": {"num_virtual_tokens": 3},
                  "lora": {"rank": 4}}
NO_EVAL = GenerationConfig(chat_template=False, max_response_tokens=4, eval_examples=0, show_examples=0)
TEXTS = ["the film was great fun", "dull", "a lovely warm and moving story of two friends", "awful",
         "boring and flat", "superb", "clumsy, bland, tedious", "funny and brilliant"] * 2


def prepared(name: str, cfg: ModelConfig, kind: str) -> tuple[Method, nn.Module, Encoded]:
    """Method `name` wrapping a classifier (2 labels) or a language model of `cfg`, seeded, with 16
    encoded training examples."""
    method = METHODS.get(name)(METHODS.get(name).Options(**METHOD_OPTIONS[name]))
    if kind == "generation":
        model, tokenizer = build_language_model(cfg, NO_EVAL, seed=0)
        data = encode_pairs(TEXTS, [t.split()[-1] for t in TEXTS], tokenizer, 32, NO_EVAL)
    else:
        model, tokenizer = method.build_model(cfg, 2, seed=0)
        data = encode(TEXTS, [i % 2 for i in range(len(TEXTS))], tokenizer, 16)
    torch.manual_seed(0)
    method.prepare(model)
    return method, model, data


def gradients(method: Method, model: nn.Module, data: Encoded) -> dict[str, torch.Tensor]:
    """The trainable tensors' gradients on 8 examples. LoRA's B starts at zero, which leaves A without
    a gradient: B is set to seeded random values first, so every tensor gets one."""
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in method.trainable(model).items():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.train()
    model.zero_grad(set_to_none=True)
    batch = next(train_batches(data, np.arange(8), 8, np.random.default_rng(0)))
    torch.manual_seed(1)  # the same dropout masks
    method.loss(model, batch).backward()
    return {n: p.grad.clone() for n, p in method.trainable(model).items()}


@pytest.fixture
def model_dirs(tiny_model_dir: Path, tiny_llama_dir: Path) -> dict[str, Path]:
    return {"classification": tiny_model_dir, "generation": tiny_llama_dir}


# --- the base's dtype ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["classification", "generation"])
@pytest.mark.parametrize("name", ["prefix", "prompt", "lora"])
def test_a_bf16_base_trains_fp32_tensors_and_exchanges_fp32(
        model_dirs: dict[str, Path], kind: str, name: str) -> None:
    method, model, data = prepared(name, ModelConfig(name=str(model_dirs[kind]), dtype="bf16"), kind)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    assert {p.dtype for p in method.trainable(model).values()} == {torch.float32}
    before = {n: p.clone() for n, p in frozen.items()}
    start = method.get_state(model)
    local = train_local(model, method, data, np.arange(16), TrainConfig(batch_size=8, lr=0.05), seed=0)
    state = method.get_state(model)
    assert np.isfinite(local.loss) and local.steps == 2
    assert {v.dtype for v in state.values()} == {torch.float32}
    assert any(not torch.equal(state[k], start[k]) for k in state)  # it trained
    assert all(torch.equal(p, before[n]) for n, p in frozen.items())  # the base did not move


def test_an_fp16_base_trains_on_the_cpu_too(tiny_llama_dir: Path) -> None:
    method, model, data = prepared("lora", ModelConfig(name=str(tiny_llama_dir), dtype="fp16"), "generation")
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.float16}
    local = train_local(model, method, data, np.arange(16), TrainConfig(batch_size=8), seed=0)
    assert np.isfinite(local.loss)
    assert {v.dtype for v in method.get_state(model).values()} == {torch.float32}


def test_a_bf16_sequence_classifier_keeps_its_head_fp32(tiny_model_dir: Path) -> None:
    cfg = ModelConfig(name=str(tiny_model_dir), dtype="bf16", pooling="pooler")
    method, model, data = prepared("lora", cfg, "classification")
    assert {p.dtype for p in method.trainable(model).values()} == {torch.float32}
    local = train_local(model, method, data, np.arange(16), TrainConfig(batch_size=8), seed=0)
    assert np.isfinite(local.loss)


def test_a_bf16_base_computes_what_the_fp32_base_does_up_to_bf16_rounding(tiny_llama_dir: Path) -> None:
    losses = {}
    for dtype in ("fp32", "bf16"):
        method, model, data = prepared("lora", ModelConfig(name=str(tiny_llama_dir), dtype=dtype),
                                       "generation")
        model.eval()
        with torch.no_grad():
            losses[dtype] = method.loss(model, next(train_batches(data, np.arange(8), 8,
                                                                  np.random.default_rng(0)))).item()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


# --- gradient checkpointing ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["classification", "generation"])
@pytest.mark.parametrize("name", ["prompt", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(
        model_dirs: dict[str, Path], kind: str, name: str) -> None:
    grads, calls = {}, {}
    for on in (False, True):
        method, model, data = prepared(
            name, ModelConfig(name=str(model_dirs[kind]), gradient_checkpointing=on), kind)
        # a layer's first part runs inside the checkpointed forward: once more in the backward pass
        layer = next(m for m in model.modules() if type(m).__name__ in ("BertLayer", "LlamaDecoderLayer"))
        runs: list[bool] = []
        next(layer.children()).register_forward_hook(lambda *_, runs=runs: runs.append(True))
        grads[on], calls[on] = gradients(method, model, data), len(runs)
    assert calls == {False: 1, True: 2}  # checkpointed: the layer runs again in the backward pass
    assert grads[True].keys() == grads[False].keys()
    for key, grad in grads[False].items():
        assert grad.abs().sum() > 0, key
        torch.testing.assert_close(grads[True][key], grad, rtol=1e-5, atol=1e-7)


# --- gradient accumulation -----------------------------------------------------------------------

def test_a_step_of_micro_batches_holds_the_rows_of_one_large_batch(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    data = encode(TEXTS * 3, [0] * 48, AutoTokenizer.from_pretrained(tiny_model_dir), 16)
    rows = np.arange(40)  # a last, short step too
    large = [b.input_ids for b in train_batches(data, rows, 16, np.random.default_rng(3))]
    steps = list(train_steps(data, rows, 8, 2, np.random.default_rng(3)))
    assert sorted(len(s) for s in steps) == [1, 2, 2]
    for batch, micro in zip(large, steps, strict=True):
        rejoined = [row[row != 0] for m in micro for row in m.input_ids]
        assert [r.tolist() for r in rejoined] == [row[row != 0].tolist() for row in batch]


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_accumulating_two_batches_of_8_is_one_step_of_16(tmp_path: Path, name: str) -> None:
    """The same rows form each step, so the updates agree up to float rounding (a Llama backbone:
    no dropout, and right padding never reaches a real token through causal attention)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from fedcustom.models.backbones import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2")[0])
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                           pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    states = {}
    for batch_size, accumulation in ((16, 1), (8, 2)):
        method, model, data = prepared(name, ModelConfig(name=str(tmp_path)), "classification")
        cfg = TrainConfig(batch_size=batch_size, grad_accumulation=accumulation, lr=0.05, local_epochs=2,
                          precision="fp32")  # agreement up to fp32 rounding
        local = train_local(model, method, data, np.arange(16), cfg, seed=0)
        assert (local.steps, local.examples) == (2, 32)
        states[accumulation] = method.get_state(model)
    for key, value in states[1].items():
        torch.testing.assert_close(states[2][key], value, rtol=1e-4, atol=1e-6)


# --- quantization --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama at hidden size 64: bitsandbytes' CPU kernels quantize 4-bit weights in blocks
    of 64 inputs, and need at least one."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fedcustom.models.backbones import resolve

    path = tmp_path_factory.mktemp("llama-64")
    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2")[0])
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                 tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def bnb() -> Any:
    """bitsandbytes (the extra `quantization`), where it is installed."""
    return pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_a_quantized_base_trains_lora_on_the_cpu(tiny_lm_config, llama_64: Path, bnb: Any, bits: str) -> None:
    from fedcustom.runs.experiment import run_experiment

    cfg = tiny_lm_config(modes=["federated"], model={"name": str(llama_64), "quantization": bits,
                                                     "gradient_checkpointing": True},
                         method={"name": "lora", "rank": 4}, federation={"rounds": 1})
    result = run_experiment(cfg, log=lambda *_: None)["federated"]
    last = result.records[-1]
    assert np.isfinite(last["train_loss"]) and np.isfinite(last["test_loss"])
    assert "peak_accelerator_mb" not in last  # on the CPU: peak RSS only
    assert (result.path / "adapter" / "adapter_config.json").is_file()


def test_a_quantized_base_holds_k_bit_layers_and_fp32_lora(llama_64: Path, bnb: Any) -> None:
    method, model, data = prepared("lora", ModelConfig(name=str(llama_64), quantization="4bit",
                                                       dtype="bf16"), "generation")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
    assert {p.dtype for p in method.trainable(model).values()} == {torch.float32}
    assert all(g.abs().sum() > 0 for g in gradients(method, model, data).values())


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_an_evaluation_leaves_k_bit_gradients_intact(llama_64: Path, bnb: Any, bits: str) -> None:
    """bitsandbytes' CPU backend repacks 4-bit weights for a faster kernel at the first forward pass
    in eval mode without gradients (the round-0 evaluation), a kernel without a backward pass:
    training after it would get wrong gradients. fedcustom keeps the trainable layout."""
    grads = {}
    for evaluated in (False, True):
        method, model, data = prepared("lora", ModelConfig(name=str(llama_64), quantization=bits,
                                                           dtype="bf16"), "generation")
        if evaluated:
            model.eval()
            with torch.no_grad():
                method.loss(model, next(train_batches(data, np.arange(8), 8, np.random.default_rng(0))))
        grads[evaluated] = gradients(method, model, data)
    for key, grad in grads[False].items():
        torch.testing.assert_close(grads[True][key], grad)


def test_a_device_bitsandbytes_cannot_run_on_is_a_one_line_error(bnb: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    check_quantization(torch.device("cpu"), "4bit")  # this version runs on the CPU
    check_quantization(torch.device("cpu"), "none")
    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"})  # as bitsandbytes before 0.45
    with pytest.raises(UserError) as err:
        check_quantization(torch.device("cpu"), "8bit")
    assert str(err.value) == (
        f"model.quantization = '8bit': bitsandbytes {bnb.__version__} has no backend for cpu (it runs "
        "on cuda); use model.quantization = 'none' (model.dtype = 'bf16' halves memory)")


def test_the_backend_is_checked_before_anything_loads(tiny_lm_config, bnb: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcustom.runs.experiment import run_experiment

    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"})
    cfg = tiny_lm_config(model={"quantization": "4bit"}, method={"name": "lora"})
    with pytest.raises(UserError, match="no backend for cpu"):
        run_experiment(cfg, log=lambda *_: None)
    assert not (tmp_path / "runs").exists()  # nothing written


# --- config errors and peak memory ---------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    (["model.dtype='fp64'"], "model.dtype = 'fp64': expected one of ['fp32', 'bf16', 'fp16']"),
    (["model.quantization=2"], "model.quantization = 2: expected one of ['none', '4bit', '8bit']"),
    (["model.gradient_checkpointing='yes'"], "model.gradient_checkpointing = 'yes': expected bool"),
    (["train.grad_accumulation=0"], "train.grad_accumulation = 0: expected an integer >= 1"),
    (["model.gradient_checkpointing=true"],  # the default method, prefix
     "model.gradient_checkpointing = True: expected false with method 'prefix': its trained tensors "
     "reach the layers as their key/value cache, which checkpointed layers drop"),
    (["method.name='full'", "model.dtype='bf16'"],
     "model.dtype = 'bf16': expected 'fp32' with method 'full': it trains the base weights, which "
     "stay fp32 (train.precision = 'bf16' computes in bfloat16)"),
    (["method.name='full'", "model.quantization='4bit'"],
     "model.quantization = '4bit': expected 'none' with method 'full': it trains the base weights, "
     "and quantized weights cannot be trained"),
    (["method.name='distill'", "method.server_method='full'", "strategy.name='consensus'",
      "model.dtype='fp16'"],
     "model.dtype = 'fp16': expected 'fp32' with method 'distill': it trains the base weights, which "
     "stay fp32 (train.precision = 'bf16' computes in bfloat16)"),
])
def test_bad_values_are_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value) == message


def test_the_options_build_from_toml() -> None:
    cfg = load_config(None, ["method.name='lora'", "model.dtype='bf16'", "model.gradient_checkpointing=true",
                             "model.quantization='8bit'", "train.grad_accumulation=4"])
    assert (cfg.model.dtype, cfg.model.gradient_checkpointing, cfg.model.quantization,
            cfg.train.grad_accumulation) == ("bf16", True, "8bit", 4)


def test_no_accelerator_peak_on_the_cpu() -> None:
    assert peak_memory_mb(torch.device("cpu")) == {}
