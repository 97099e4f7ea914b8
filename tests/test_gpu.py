"""What needs a CUDA GPU: opt-in (`pytest -m gpu`), skipped where torch sees none.

`python -m benchmarks gpu` (benchmarks/gpu.sh) runs these on a GPU machine. Models and data are
built here (benchmarks/offline.py, a tiny Llama from its config): a GPU machine may have no
packaged models and no network.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedcustom.core.config import ExperimentConfig, GenerationConfig, TrainConfig, build, component
from fedcustom.core.device import check_precision, resolve_device
from fedcustom.core.registry import METHODS
from fedcustom.data.batching import Encoded
from fedcustom.methods.training import train_local
from fedcustom.models.lm import LanguageModel
from fedcustom.runs.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[1]
GPU = torch.device("cuda", 0)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random BERT with an in-process tokenizer, and a labelled CSV (no download)."""
    import sys

    sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level package beside src/
    from benchmarks.offline import TINY, write_encoder_dir, write_reviews_csv

    root = tmp_path_factory.mktemp("offline")
    return write_encoder_dir(root / "encoder", TINY), write_reviews_csv(root / "reviews.csv", 120)


def experiment(offline: tuple[Path, Path], out: Path, **sections: dict | str) -> ExperimentConfig:
    model_dir, csv = offline
    raw: dict = {
        "name": "gpu", "output_dir": str(out), "threads": 1, "modes": ["federated"],
        "model": {"name": str(model_dir), "max_length": 16},
        "data": {"dataset": str(csv), "test_fraction": 0.25},
        "partition": {"scheme": "iid", "num_clients": 2},
        "method": {"name": "prefix", "num_virtual_tokens": 4},
        "train": {"batch_size": 8, "lr": 0.05},
        "federation": {"rounds": 2},
    }
    for key, value in sections.items():  # a new method replaces the whole table; others merge
        merge = isinstance(value, dict) and key != "method"
        raw[key] = {**raw[key], **value} if merge else value
    return build(ExperimentConfig, raw)


def tiny_lm(method_name: str, seed: int = 0) -> tuple[LanguageModel, object]:
    """A tiny random Llama (no dropout anywhere) as fedcustom's LanguageModel, prepared."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64, max_position_embeddings=64))
    lm.requires_grad_(False)
    options = {"name": method_name, **({"num_virtual_tokens": 4} if method_name == "prefix" else {})}
    method = METHODS.get(method_name)(component("method", options).options)
    torch.manual_seed(seed)  # the method's own initialization
    return method.prepare(LanguageModel(lm, None, GenerationConfig())), method


def random_tokens(rows: int, length: int, seed: int = 0) -> Encoded:
    ids = torch.randint(128, (rows, length), generator=torch.Generator().manual_seed(seed))
    return Encoded(ids, torch.full((rows,), length), ids.clone())


def test_auto_picks_the_gpu_and_it_has_bf16() -> None:
    assert resolve_device("auto") == GPU
    check_precision(GPU, "bf16")  # raises on a GPU without bfloat16


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_federated_run_computes_on_the_gpu(offline, tmp_path: Path, precision: str) -> None:
    torch.cuda.reset_peak_memory_stats(GPU)
    cfg = experiment(offline, tmp_path / "runs", device="cuda", train={"precision": precision})
    run = run_experiment(cfg, log=lambda *_: None)["federated"]
    assert torch.cuda.max_memory_allocated(GPU) > 0  # the model computed there
    assert [r["round"] for r in run.records] == [0, 1, 2]
    assert all(r["peak_accelerator_mb"] > 0 for r in run.records[1:])  # next to peak_rss_mb
    assert all(np.isfinite(r["train_loss"]) for r in run.records[1:])
    state = load_file(run.path / "state.safetensors")
    assert state and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in state.values())


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_a_bf16_or_4bit_base_trains_lora_on_the_gpu(offline, tmp_path: Path, quantization: str) -> None:
    """model.dtype / model.quantization on the GPU: the k-bit layers load on the GPU (transformers'
    device map) and stay there; what is trained and exchanged is fp32 on the CPU."""
    cfg = experiment(offline, tmp_path / "runs", device="cuda", method={"name": "lora", "rank": 4},
                     model={"dtype": "bf16", "quantization": quantization, "gradient_checkpointing": True})
    run = run_experiment(cfg, log=lambda *_: None)["federated"]
    assert all(np.isfinite(r["train_loss"]) and r["peak_accelerator_mb"] > 0 for r in run.records[1:])
    state = load_file(run.path / "state.safetensors")
    assert state and all(t.dtype == torch.float32 for t in state.values())


@pytest.mark.parametrize("method_name", ["lora", "prefix"])
def test_gpu_training_matches_the_cpu_in_fp32(method_name: str) -> None:
    """The same seed and steps on both devices give the same loss and nearly the same update
    (fp32 sums in another order: relative differences far below one step's size)."""
    data, rows = random_tokens(16, 24), np.arange(16)
    cfg = TrainConfig(batch_size=8, lr=1e-3)
    model, method = tiny_lm(method_name)
    start = method.get_state(model)
    on_gpu = copy.deepcopy(model).to(GPU)
    cpu_result = train_local(model, method, data, rows, cfg, seed=3)
    gpu_result = train_local(on_gpu, method, data, rows, cfg, seed=3)
    assert gpu_result.loss == pytest.approx(cpu_result.loss, rel=1e-4)
    cpu_state, gpu_state = method.get_state(model), method.get_state(on_gpu)
    assert all(t.device.type == "cpu" for t in gpu_state.values())
    cpu_delta = torch.cat([(cpu_state[k] - start[k]).flatten() for k in sorted(start)])
    gpu_delta = torch.cat([(gpu_state[k] - start[k]).flatten() for k in sorted(start)])
    assert cpu_delta.norm() > 0
    assert (gpu_delta - cpu_delta).norm() / cpu_delta.norm() < 1e-2


def test_bf16_lora_learns_on_the_gpu() -> None:
    model, method = tiny_lm("lora")
    model.to(GPU)
    data, rows = random_tokens(8, 24), np.arange(8)
    cfg = TrainConfig(batch_size=8, lr=1e-2, precision="bf16")
    losses = [train_local(model, method, data, rows, cfg, seed=epoch).loss for epoch in range(8)]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in method.trainable(model).values())  # autocast only
