"""The device and precision options: resolution logic, a missing GPU as a one-line error, bf16
autocast training on the CPU, and exchanged states that are CPU tensors whatever computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedcustom.cli import main
from fedcustom.core import device as device_module
from fedcustom.core.config import ConfigError, ModelConfig, TrainConfig
from fedcustom.core.device import autocast, resolve_device, resolve_precision
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.data.batching import encode
from fedcustom.methods.training import train_local
from fedcustom.runs.experiment import run_experiment
from fedcustom.runs.results import load_checkpoint


def test_device_resolution() -> None:
    assert resolve_device("auto", gpus=0) == torch.device("cpu")
    assert resolve_device("auto", gpus=2) == torch.device("cuda", 0)
    assert resolve_device("cpu", gpus=2) == torch.device("cpu")
    assert resolve_device("cuda", gpus=1) == torch.device("cuda", 0)
    assert resolve_device("cuda:1", gpus=2) == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"device = 'cuda': no GPU found"):
        resolve_device("cuda", gpus=0)
    with pytest.raises(UserError, match=r"device = 'cuda:2': 2 GPU\(s\) found"):
        resolve_device("cuda:2", gpus=2)
    with pytest.raises(UserError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu", gpus=1)


def test_bad_device_and_precision_fail_at_config_time(tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"^device = 'gpu0': expected auto, cpu, cuda or cuda:N$"):
        tiny_config(device="gpu0")
    with pytest.raises(ConfigError, match=r"train.precision = 'fp16': expected one of"):
        tiny_config(train={"precision": "fp16"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(tiny_config, tmp_path, capsys) -> None:
    cfg = tiny_config()
    config = tmp_path / "c.toml"
    from fedcustom.core.config import dumps

    config.write_text(dumps(cfg))
    assert main(["run", str(config), "--set", "device=cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device = 'cuda': no GPU found" in err
    assert not (tmp_path / "runs").exists()  # nothing written


def tiny_prefix(tiny_model_dir):
    method = METHODS.get("prefix")(METHODS.get("prefix").Options(num_virtual_tokens=4))
    model, tokenizer = method.build_model(ModelConfig(name=str(tiny_model_dir), max_length=16), 2, 0)
    method.prepare(model)
    texts = ["the film was great and warm", "dull, flat and tedious"] * 16
    return method, model, encode(texts, [1, 0] * 16, tokenizer, 16)


def test_bf16_autocast_trains_on_the_cpu(tiny_model_dir) -> None:
    method, model, data = tiny_prefix(tiny_model_dir)
    start = method.get_state(model)
    cfg = TrainConfig(batch_size=8, lr=0.05, precision="bf16")
    with autocast(torch.device("cpu"), "bf16"):  # the forward really runs in bfloat16
        assert model(data.input_ids[:2], (data.input_ids[:2] != 0).long()).dtype == torch.bfloat16
    losses = [train_local(model, method, data, np.arange(32), cfg, seed=epoch).loss for epoch in range(6)]
    state = method.get_state(model)
    assert losses[-1] < losses[0]
    assert all(v.dtype == torch.float32 for v in state.values())  # weights and state stay fp32
    assert any(not torch.equal(state[k], start[k]) for k in state)


def test_fp32_is_unchanged_by_the_device_code(tiny_model_dir) -> None:
    """fp32 on the CPU: autocast off, batches not copied; the same seed gives the same update."""
    runs = []
    for _ in range(2):
        method, model, data = tiny_prefix(tiny_model_dir)
        train_local(model, method, data, np.arange(32), TrainConfig(batch_size=8, precision="fp32"), seed=1)
        runs.append(method.get_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    with autocast(torch.device("cpu"), "fp32"):
        assert model(data.input_ids[:2], (data.input_ids[:2] != 0).long()).dtype == torch.float32


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert TrainConfig().precision == "auto"
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert resolve_precision(cpu, "auto") == "fp32" and resolve_precision(cpu, "bf16") == "bf16"
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert resolve_precision(cpu, "auto") == "bf16" and resolve_precision(cpu, "fp32") == "fp32"
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert resolve_precision(cpu, "auto") == "bf16"
    with autocast(cpu, "auto"):  # the resolved precision is what autocast applies
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset())
    with autocast(cpu, "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_states_and_checkpoints_are_cpu_tensors(tiny_config) -> None:
    results = run_experiment(tiny_config(train={"precision": "bf16"}, modes=["federated"]),
                             log=lambda *_: None)
    path = results["federated"].path
    ckpt = load_checkpoint(path / "checkpoint.safetensors")
    assert ckpt is not None
    tensors = [*load_file(path / "state.safetensors").values(), *ckpt.state.values()]
    assert tensors and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    assert all(0 <= r["test_accuracy"] <= 1 for r in results["federated"].records)
