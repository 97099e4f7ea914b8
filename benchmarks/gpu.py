"""The GPU check: `python -m benchmarks gpu [--dry-run] [--budget SECONDS]` (or benchmarks/gpu.sh).

Five parts, each with its own time budget, inside an overall budget (default 450 s): a part that
would start with too little time left is recorded as skipped, one that overruns its budget is
stopped (SIGALRM) and recorded as timed out with what it had measured, one that fails is recorded
with its error, and the next part runs either way.
  device     torch's view of the GPU: name, memory, compute capability, bf16 support
  train      tokens/s and peak memory of LoRA (rank 16) and prefix-tuning on a randomly initialized
             1B Llama (benchmarks/gpu_train.py), fp32 and bf16 autocast, batch 8 x 512 tokens
  overhead   benchmarks/overhead.py on the GPU: a federated prefix-tuning run of fedcustom's
             in-process engine vs a plain PyTorch + PEFT loop doing the same steps, on a
             BERT-base-shaped random encoder with an in-process tokenizer (benchmarks/offline.py)
  lora_4bit  LoRA on the same 1B model quantized to 4-bit by bitsandbytes, if it imports
  tests      the GPU-marked tests (pytest -m gpu)
One JSON (machine, commit, command, settings, raw numbers, per-part wall time) is written after
every part to $OUT/gpu.json when $OUT is set (the device tool brings back what is under $OUT),
else to --out (benchmarks/results). Nothing is downloaded: models are built from configs.
`--dry-run` runs the same code on the CPU with a tiny model (2 layers, hidden 64, 32 tokens,
2 timed steps) and writes gpu-dry-run.json: it checks the script, it measures nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import GPU_PARTS, RESULTS, ROOT, Options, git_commit, machine_info
from benchmarks.gpu_train import LLAMA_1B, LLAMA_TINY, TrainPlan, free_memory, lora_4bit_part, train_part
from benchmarks.offline import BASE, TINY, EncoderShape, write_encoder_dir, write_reviews_csv

PARTS = GPU_PARTS
MIN_PART_S = 5.0  # a part is not started with less time than this left


@dataclass(frozen=True)
class Plan:
    train: TrainPlan
    encoder: EncoderShape  # the overhead part's model
    overhead_quick: bool  # 4 clients x 2 rounds (else 8 x 3), 16 examples each
    overhead_repeats: int
    overhead_max_length: int
    overhead_words: tuple[int, int]  # words per text
    budgets: dict[str, float]  # seconds per part


GPU = Plan(TrainPlan("cuda", LLAMA_1B, batch=8, seq=512, warmup_steps=3, timed_steps=20),
           BASE, overhead_quick=False, overhead_repeats=3, overhead_max_length=128,
           overhead_words=(40, 120),
           budgets={"device": 15, "train": 200, "overhead": 100, "lora_4bit": 75, "tests": 60})
DRY_RUN = Plan(TrainPlan("cpu", LLAMA_TINY, batch=8, seq=32, warmup_steps=1, timed_steps=2),
               TINY, overhead_quick=True, overhead_repeats=1, overhead_max_length=32,
               overhead_words=(3, 9),
               budgets={"device": 15, "train": 60, "overhead": 60, "lora_4bit": 30, "tests": 60})


class PartTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in this (main) thread after `seconds`; elsewhere only the checks apply."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise PartTimeout(f"stopped at its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def device_part(plan: Plan, out: dict[str, Any], _deadline: float) -> None:
    out.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
               cuda_available=torch.cuda.is_available())
    if plan.train.device != "cuda":
        out["device"] = "cpu (dry run)"
        print("gpu: device: cpu (dry run)")
        return
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    out.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
               total_memory_gib=total / 2**30, free_memory_gib=free / 2**30,
               capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
               bf16_supported=torch.cuda.is_bf16_supported())
    print(f"gpu: device: {out['device']}, {out['total_memory_gib']:.1f} GiB "
          f"({out['free_memory_gib']:.1f} free), capability {out['capability']}, "
          f"bf16 {out['bf16_supported']}")


def overhead_part(plan: Plan, out: dict[str, Any], _deadline: float, opts: Options) -> None:
    from benchmarks import overhead

    threads = torch.get_num_threads()  # overhead.run sets one thread, as on the CPU
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_encoder_dir(Path(tmp) / "encoder", plan.encoder)
        csv = write_reviews_csv(Path(tmp) / "reviews.csv", 200, plan.overhead_words)
        sub = replace(opts, quick=plan.overhead_quick, model=str(model_dir), out=Path(tmp) / "results",
                      repeats=plan.overhead_repeats, overrides=[
                          f"device={plan.train.device}", f"data.dataset={json.dumps(str(csv))}",
                          f"model.max_length={plan.overhead_max_length}"])
        out["encoder"] = asdict(plan.encoder)
        try:
            overhead.run(sub)
        finally:
            torch.set_num_threads(threads)
        result = json.loads((Path(tmp) / "results" / "overhead.json").read_text())
    out.update(settings=result["settings"], results=result["results"], ratios=result["ratios"])


def tests_part(plan: Plan, out: dict[str, Any], deadline: float) -> None:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text())
    if not files:
        out["status"] = "no GPU-marked tests"
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files]
    if plan.train.device != "cuda":
        cmd.append("--collect-only")  # the dry run checks that they collect, not that they pass
    out["command"] = " ".join(cmd[1:])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(1.0, deadline - time.monotonic() - 2))
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    out.update(exit_code=proc.returncode, summary=lines[-1] if lines else "", tail=lines[-40:])
    print(f"gpu: tests: {out['summary']}")
    if proc.returncode != 0:
        raise RuntimeError(f"pytest exit {proc.returncode}: {out['summary']}")


def write(report: dict[str, Any], path: Path) -> None:
    from fedcustom.core.io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(report, indent=2, default=str) + "\n")


def output_path(opts: Options) -> Path:
    folder = Path(os.environ["OUT"]) if os.environ.get("OUT") and opts.out == RESULTS else opts.out
    return folder / ("gpu-dry-run.json" if opts.dry_run else "gpu.json")


def run(opts: Options) -> dict[str, Any]:
    from fedcustom.core.errors import UserError

    plan = DRY_RUN if opts.dry_run else GPU
    if not opts.dry_run and not torch.cuda.is_available():
        raise UserError("benchmarks gpu: torch sees no CUDA GPU here; --dry-run checks the script on the CPU")
    start = time.monotonic()
    deadline = start + opts.budget
    path = output_path(opts)
    report: dict[str, Any] = {
        "benchmark": "gpu", "command": opts.command, "commit": git_commit(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "dry_run": opts.dry_run,
        "machine": machine_info(), "budget_s": opts.budget,
        "plan": asdict(plan), "parts": {},
        "notes": __doc__.split("\n\n", 1)[1].strip(),
    }
    steps: dict[str, Callable[[Plan, dict[str, Any], float], None]] = {
        "device": device_part,
        "train": lambda p, o, d: train_part(p.train, o, d),
        "overhead": lambda p, o, d: overhead_part(p, o, d, opts),
        "lora_4bit": lambda p, o, _d: lora_4bit_part(p.train, o),
        "tests": tests_part,
    }
    for name in PARTS:
        if name not in opts.parts:
            report["parts"][name] = {"status": "skipped: not asked for (--parts)", "wall_s": 0.0}
            continue
        left = deadline - time.monotonic()
        budget = min(plan.budgets[name], left)
        if budget < MIN_PART_S:
            report["parts"][name] = {"status": f"skipped: {left:.0f} s of the overall budget left",
                                     "wall_s": 0.0}
            print(f"gpu: {name}: {report['parts'][name]['status']}")
            write(report, path)
            continue
        out: dict[str, Any] = {}
        part = {"budget_s": budget, "result": out}
        report["parts"][name] = part
        part_start = time.monotonic()
        try:
            with time_limit(budget):
                steps[name](plan, out, part_start + budget)
            part["status"] = out.pop("status", "ok")
        except PartTimeout as e:
            part["status"] = f"timed out: {e}"
            for setting in out.get("settings", {}).values():  # the one it was in when stopped
                if setting.get("status") == "running":
                    setting["status"] = "interrupted"
        except Exception as e:  # noqa: BLE001 - a failed part is recorded; the next part still runs
            part["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            part["traceback"] = traceback.format_exc().splitlines()[-12:]
        free_memory()  # what a stopped or failed part left on the GPU
        part["wall_s"] = time.monotonic() - part_start
        print(f"gpu: {name}: {part['status']} ({part['wall_s']:.1f} s)")
        report["total_wall_s"] = time.monotonic() - start
        write(report, path)
    report["total_wall_s"] = time.monotonic() - start
    write(report, path)
    print(f"gpu: {len(PARTS)} parts in {report['total_wall_s']:.0f} s -> {path}")
    return report
