"""Where the model computes, and in what precision: the one place that knows about GPUs.

The model moves to the device once (runs/experiment.py); batches follow it in the shared training
loop and in evaluation (`model_device`). Exchanged states always live on the CPU (Method.get_state
copies there), so payloads, strategies, byte counts and checkpoints are the same on any device.
`bf16` runs forward passes under autocast (bfloat16 matmuls, fp32 weights and optimizer); `fp32`
changes nothing; the default `auto` is bf16 where the hardware computes it natively (measured on
an AVX-512 BF16 Xeon: 1.3-1.7x training, 2.1-2.7x evaluation throughput, accuracy unchanged within
noise: docs/results/precision) and fp32 where bf16 would be emulated (slower than fp32).
Round records carry the accelerator's peak memory next to peak RSS.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import resource
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn

from fedcustom.core.errors import UserError
from fedcustom.core.extras import require

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def resolve_device(name: str, gpus: int | None = None) -> torch.device:
    """`auto` -> the first GPU if there is one, else the CPU; `cuda`/`cuda:N` must exist.
    `gpus` (how many are present) is for tests; None asks torch."""
    if not DEVICE_PATTERN.match(name):
        raise UserError(f"device = {name!r}: expected auto, cpu, cuda or cuda:N")
    count = gpus if gpus is not None else torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return torch.device("cuda:0" if count else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        found = f"{count} GPU(s) found" if count else "no GPU found (torch has no CUDA device here)"
        raise UserError(f"device = {name!r}: {found}; use device = 'auto' or 'cpu'")
    return torch.device("cuda", index)


def model_device(model: nn.Module) -> torch.device:
    """The device a model's weights are on (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


# CPU flags (/proc/cpuinfo) of native bfloat16 matrix instructions
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return frozenset()
    line = next((x for x in info.read_text().splitlines() if x.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


@functools.cache
def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((x.partition(":")[2].strip() for x in lines if x.startswith("model name")),
                platform.processor())


# CPU features that decide how fast a matmul can be: bf16 runs on AMX tiles or AVX-512 BF16
# instructions where the CPU has them, and is emulated (often slower than fp32) where it has not
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def machine_info(device: torch.device | None = None, precision: str | None = None) -> dict[str, object]:
    """What a run's times depend on: CPU and its matrix instructions, cores, threads, memory, load,
    library versions; with `device` and `precision`, what `auto` resolved to on this machine (the
    same config runs bf16 on one CPU and fp32 on another: docs/demo/fp32-avx2)."""
    import peft
    import psutil
    import transformers

    flags = cpu_flags()
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in CPU_FLAGS} if flags else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # others' jobs share the machine
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        **({"gpu": torch.cuda.get_device_name(0), "torch_cuda": torch.version.cuda}
           if torch.cuda.is_available() else {}),
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    if device is not None:
        info["device"] = str(device)
    if device is not None and precision is not None:
        info["precision"] = resolve_precision(device, precision)
    return info


def native_bf16(device: torch.device) -> bool:
    """Does `device` run bfloat16 matrix work natively (not emulated)?"""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and bool(cpu_flags() & NATIVE_BF16_FLAGS)


def resolve_precision(device: torch.device, precision: str) -> str:
    """`auto` -> `bf16` where the device computes it natively, else `fp32`; others as given."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """Forward passes in bfloat16 under autocast for `bf16` (and `auto` where native); a no-op
    for `fp32`."""
    enabled = resolve_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def check_precision(device: torch.device, precision: str) -> None:
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError(f"train.precision = 'bf16': {torch.cuda.get_device_name(device)} has no "
                        "bfloat16 support; use 'fp32'")


def check_quantization(device: torch.device, quantization: str) -> None:
    """Before any model loads: can bitsandbytes quantize on `device`? Its CPU backend (0.45 on)
    runs 4- and 8-bit layers too, slower than bf16 (docs/performance.md)."""
    if quantization == "none":
        return
    bnb = require("bitsandbytes", f"model.quantization = '{quantization}'")
    supported = sorted(getattr(bnb, "supported_torch_devices", {"cuda"}))  # older versions: CUDA only
    if device.type not in supported:
        raise UserError(f"model.quantization = '{quantization}': bitsandbytes {bnb.__version__} has no "
                        f"backend for {device.type} (it runs on {', '.join(supported)}); use "
                        "model.quantization = 'none' (model.dtype = 'bf16' halves memory)")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak of accelerator memory (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """{"peak_accelerator_mb": the most memory torch allocated on `device` since the last reset},
    or nothing on the CPU (peak RSS covers it)."""
    if device.type != "cuda":
        return {}
    return {"peak_accelerator_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def peak_rss_mb() -> float:
    """The process's peak resident memory since the last reset_peak_rss (Linux: VmHWM), else
    since it started (getrusage, where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_rss() -> None:
    """Start a new peak (Linux 4.0+), so a run's records hold its own peak, not an earlier run's in
    the same process (a study, a test session). Elsewhere a no-op."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")

