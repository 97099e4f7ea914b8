"""Training throughput of a real LLM's shape, through fedcustom's own code: the GPU check's parts
`train` (LoRA and prefix-tuning, fp32 and bf16 autocast) and `lora_4bit` (LoRA on a 4-bit base).

The model is a randomly initialized Llama-style causal LM built from a transformers LlamaConfig
(no download), wrapped as fedcustom's LanguageModel and prepared by the registered method; the
steps run in fedcustom's shared loop (`train_local`: batches moved to the device, autocast,
AdamW, gradient clipping, loss.item() every step, which syncs the GPU). Every token is a target.
A warm-up call (cuBLAS handles, autotuning, the allocator's pools) runs before the clock.
"""

from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Llama 3.2 1B's width and depth (hidden 2048, 16 layers, 32 query / 8 key-value heads, MLP 8192,
# tied embeddings) with a 32k vocabulary (Llama 2's): 1.0B parameters.
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 32000}
LLAMA_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256}
LORA = {"name": "lora", "rank": 16, "alpha": 32.0}
PREFIX = {"name": "prefix", "num_virtual_tokens": 16}
SETTINGS = (("lora", "fp32"), ("lora", "bf16"), ("prefix", "fp32"), ("prefix", "bf16"))


@dataclass(frozen=True)
class TrainPlan:
    device: str
    llama: dict[str, int]
    batch: int
    seq: int
    warmup_steps: int
    timed_steps: int


def llama_config(plan: TrainPlan) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**plan.llama, max_position_embeddings=max(2048, plan.seq), tie_word_embeddings=True)


def task_model(lm: Any, method_spec: dict[str, Any]) -> tuple[Any, Any]:
    """fedcustom's LanguageModel around `lm`, prepared by the registered method."""
    from fedcustom.core.config import GenerationConfig, component
    from fedcustom.core.registry import METHODS
    from fedcustom.models.lm import LanguageModel

    lm.requires_grad_(False)
    method = METHODS.get(method_spec["name"])(component("method", method_spec).options)
    model = method.prepare(LanguageModel(lm, None, GenerationConfig()))
    return model, method


def measure(model: Any, method: Any, plan: TrainPlan, precision: str, seed: int = 0) -> dict[str, Any]:
    """Tokens per second of `timed_steps` steps at batch x seq, after the warm-up; peak memory."""
    from fedcustom.core.config import TrainConfig
    from fedcustom.data.batching import Encoded
    from fedcustom.methods.training import train_local

    device = torch.device(plan.device)
    n = plan.batch * (plan.warmup_steps + plan.timed_steps)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(plan.llama["vocab_size"], (n, plan.seq), generator=generator)
    data = Encoded(ids, torch.full((n,), plan.seq), ids.clone())  # every token is a target
    cfg = TrainConfig(batch_size=plan.batch, lr=1e-4, precision=precision)  # type: ignore[arg-type]
    rows = np.arange(n)
    cuda = device.type == "cuda"
    train_local(model, method, data, rows[: plan.batch * plan.warmup_steps], cfg, seed=seed)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = train_local(model, method, data, rows[plan.batch * plan.warmup_steps:], cfg, seed=seed + 1)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    tokens = result.steps * plan.batch * plan.seq
    return {
        "precision": precision, "steps": result.steps, "tokens": tokens, "wall_s": wall,
        "tokens_per_s": tokens / wall, "ms_per_step": 1000 * wall / max(result.steps, 1),
        "loss": result.loss,
        "trainable_parameters": sum(p.numel() for p in method.trainable(model).values()),
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_part(plan: TrainPlan, out: dict[str, Any], deadline: float) -> None:
    """LoRA and prefix-tuning x fp32 and bf16, one fresh model each; a setting whose predecessor
    took longer than the time left is skipped (recorded as such)."""
    from transformers import LlamaForCausalLM

    out["model"] = {"config": plan.llama, "batch": plan.batch, "seq": plan.seq,
                    "warmup_steps": plan.warmup_steps, "timed_steps": plan.timed_steps,
                    "lora": LORA, "prefix": PREFIX,
                    "float32_matmul_precision": torch.get_float32_matmul_precision()}
    settings: dict[str, Any] = out.setdefault("settings", {})
    longest = 0.0
    for method_name, precision in SETTINGS:
        key = f"{method_name}_{precision}"
        left = deadline - time.monotonic()
        if left < 1.2 * longest:
            settings[key] = {"status": f"skipped: {left:.0f} s left, the last setting took {longest:.0f} s"}
            continue
        start = time.monotonic()
        free_memory()
        torch.manual_seed(0)
        with torch.device(plan.device):  # initialized where it runs: seconds, not minutes, for 1B
            lm = LlamaForCausalLM(llama_config(plan))
        out["model"]["parameters"] = sum(p.numel() for p in lm.parameters())
        model, method = task_model(lm, LORA if method_name == "lora" else PREFIX)
        model.to(plan.device)  # the method's new tensors
        settings[key] = {"status": "running"}
        settings[key] = {"status": "ok", **measure(model, method, plan, precision),
                         "setting_wall_s": time.monotonic() - start}
        peak = settings[key]["max_memory_allocated_gib"]
        print(f"gpu: train {key}: {settings[key]['tokens_per_s']:.0f} tokens/s"
              + (f", peak {peak:.1f} GiB" if peak is not None else ""))
        del model, method, lm
        longest = max(longest, time.monotonic() - start)
    free_memory()


def lora_4bit_part(plan: TrainPlan, out: dict[str, Any]) -> None:
    """LoRA (same options) on the same model quantized to 4-bit NF4 by bitsandbytes, bf16 compute.
    The random model is saved in bf16 and loaded back quantized, as from_pretrained quantizes."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the same: not measurable here
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        out["status"] = f"unavailable: bitsandbytes does not import ({reason})"
        return
    if plan.device != "cuda":
        out["status"] = "unavailable: 4-bit layers need a CUDA GPU (dry run on the CPU)"
        return
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    free_memory()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        with torch.device("cuda"):
            LlamaForCausalLM(llama_config(plan)).to(torch.bfloat16).save_pretrained(Path(tmp))
        free_memory()
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        lm = LlamaForCausalLM.from_pretrained(tmp, quantization_config=quant, device_map={"": 0})
    out["weights_memory_gib"] = torch.cuda.memory_allocated() / 2**30
    model, method = task_model(lm, LORA)  # PEFT puts the LoRA tensors beside their 4-bit layers
    out.update(measure(model, method, plan, "bf16"))
    out["status"] = "ok"
    print(f"gpu: lora_4bit: {out['tokens_per_s']:.0f} tokens/s, "
          f"peak {out['max_memory_allocated_gib']:.1f} GiB")
    del model, method, lm
    free_memory()
