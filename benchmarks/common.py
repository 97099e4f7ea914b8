"""What every benchmark shares: the config it starts from, machine info, clocks, memory, output.

The machine is shared and noisy, so benchmarks compare within one run (ours and the reference
interleaved, medians of repeats) and report ratios next to absolute numbers. Every span is timed
twice: wall time, and CPU time (time.process_time; for process trees, psutil's per-process
user+system). With one torch thread per side, CPU time is the work done, and it stays honest when
other jobs compete for the cores; wall time is what a user waits.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GPU_PARTS = ("device", "train", "overhead", "lora_4bit", "tests")  # benchmarks/gpu.py, in order


@dataclass
class Options:
    """Command-line settings every benchmark receives."""

    quick: bool = False
    model: str = "minilm"
    overrides: list[str] = field(default_factory=list)  # `--set a.b=v`, applied after each benchmark's own
    out: Path = RESULTS
    repeats: int = 0  # 0: the benchmark's default (fewer with --quick)
    clients: tuple[int, ...] = (10, 100, 1000)  # the scale benchmark's client counts
    workers: tuple[int, ...] = (1,)  # the scale benchmark's worker process counts (config `workers`)
    command: str = ""
    dry_run: bool = False  # gpu: the same code on the CPU with a tiny model
    budget: float = 450.0  # gpu: seconds for all its parts
    parts: tuple[str, ...] = GPU_PARTS  # gpu: which of its parts to run


def experiment_config(opts: Options, own: Sequence[str]) -> Any:
    """A fedcustom ExperimentConfig: benchmark settings first, then the user's --set overrides."""
    from fedcustom.core.config import load_config

    # fp32 unless a benchmark or --set says otherwise: the default `auto` would pick bf16 on some
    # CPUs only, and a benchmark's numbers must mean the same on every machine
    base = ["threads=1", f"model.name={json.dumps(opts.model)}", "train.precision='fp32'"]
    return load_config(None, [*base, *own, *opts.overrides])


def one_thread() -> None:
    """One torch thread everywhere: the reference machine has 2 cores shared by several jobs, and
    both sides of every comparison must run under the same setting."""
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def machine_info() -> dict[str, Any]:
    from fedcustom.core.device import machine_info as info  # fedcustom imports stay lazy here

    return info()


def git_commit() -> str:
    """HEAD of the checkout (with '+dirty' when files differ from it); where there is no git (a
    copy of the tree on another machine), the commit `gpu.sh --prepare` saved in .whl/COMMIT."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        saved = ROOT / ".whl" / "COMMIT"
        return saved.read_text().strip() if saved.is_file() else "unknown (no git here)"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass(frozen=True)
class Mark:
    """A point in time on both clocks; subtract two marks to get a span."""

    wall: float
    cpu: float

    @staticmethod
    def now() -> Mark:
        return Mark(time.perf_counter(), time.process_time())

    def __sub__(self, other: Mark) -> Mark:
        return Mark(self.wall - other.wall, self.cpu - other.cpu)


def write_result(opts: Options, name: str, settings: dict[str, Any], results: dict[str, Any],
                 ratios: dict[str, float], notes: str) -> Path:
    """benchmarks/results/NAME.json, written whole or not at all."""
    from fedcustom.core.io import atomic_write

    payload = {
        "benchmark": name,
        "command": opts.command,
        "commit": git_commit(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": opts.quick,
        "machine": machine_info(),
        "settings": settings,
        "results": results,
        "ratios": ratios,
        "notes": notes,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"{name}.json"
    atomic_write(path, json.dumps(payload, indent=2) + "\n")
    return path


def print_ratios(name: str, ratios: dict[str, float]) -> None:
    for key, value in ratios.items():
        print(f"{name}: {key} = {value:.3f}")


class TreeMonitor:
    """Peak proportional set size (PSS) and CPU time of a process and all its descendants, sampled
    in a thread every `interval` seconds.

    PSS splits shared pages between the processes that map them, so summing it over a tree of
    workers (Ray starts several) does not count the shared libraries or object store many times.
    CPU time is each process's user+system time at its last sample, summed (a process loses at most
    its last interval).
    """

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                try:
                    total += proc.memory_full_info().pss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = times.user + times.system
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_point(kind: str, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one measurement in a fresh Python process (`python -m benchmarks _point KIND SPEC`), so its
    peak memory is its own, and return the JSON it prints on its last stdout line, plus the peak
    PSS and the CPU seconds of its whole process tree."""
    cmd = [sys.executable, "-m", "benchmarks", "_point", kind, json.dumps(spec)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    with TreeMonitor(proc.pid) as monitor:
        out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise RuntimeError(f"benchmark point {kind} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(out.strip().splitlines()[-1])
    result["tree_peak_pss_mb"] = monitor.peak_bytes / 2**20
    result["tree_cpu_s"] = monitor.cpu_seconds
    return result
