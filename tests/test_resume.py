"""A run interrupted after any round and resumed gives what an uninterrupted run gives."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedcustom.cli import main
from fedcustom.core.config import dumps
from fedcustom.core.device import resolve_precision
from fedcustom.runs.experiment import resume_experiment, run_experiment
from fedcustom.runs.results import CHECKPOINT, load_checkpoint, read_records

TIMING = ("client_seconds", "round_seconds", "peak_rss_mb")
QUIET = {"log": lambda *_: None}


def outcome(run_dir: Path, mode: str) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """A mode's records without timings, and its final state."""
    records = [{k: v for k, v in r.items() if k not in TIMING} for r in read_records(run_dir / mode)]
    return records, load_file(run_dir / mode / "state.safetensors")


def assert_same(a: Path, b: Path, modes: list[str]) -> None:
    for mode in modes:
        (records_a, state_a), (records_b, state_b) = outcome(a, mode), outcome(b, mode)
        assert records_a == records_b
        assert state_a.keys() == state_b.keys()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # bit-identical


def config(tiny_config, rounds: int = 3, **extra: Any):
    # server momentum and a label-flipping client: state beyond the global weights must survive
    return tiny_config(partition={"num_clients": 4}, strategy={"name": "fedavg", "momentum": 0.5},
                       attack={"kind": "label_flip", "fraction": 0.25},
                       federation={"rounds": rounds, "fraction_fit": 0.75}, **extra)


class Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("stop_at", [("federated", 2), ("centralized", 1)])
def test_interrupted_run_resumes_to_the_same_result(tiny_config, stop_at: tuple[str, int]) -> None:
    cfg = config(tiny_config, name="stopped")
    reference = run_experiment(dataclasses.replace(cfg, name="reference"), **QUIET)["federated"].path.parent

    def interrupt(mode: str, record: dict[str, Any]) -> None:
        if (mode, record["round"]) == stop_at:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(cfg, on_record=interrupt, **QUIET)
    [run_dir] = Path(cfg.output_dir).glob("stopped-*")
    ckpt = load_checkpoint(run_dir / stop_at[0] / CHECKPOINT)
    assert ckpt is not None and ckpt.round == stop_at[1]
    assert not (run_dir / stop_at[0] / "state.safetensors").exists()

    seen: list[tuple[str, int]] = []
    resume_experiment(run_dir, on_record=lambda mode, r: seen.append((mode, r["round"])), **QUIET)
    # finished modes are kept, the stopped one goes on after its checkpoint, the rest run whole
    expected = {("federated", 2): [("federated", 3)] + [("centralized", n) for n in range(4)],
                ("centralized", 1): [("centralized", 2), ("centralized", 3)]}[stop_at]
    assert seen == expected
    assert_same(run_dir, reference, ["federated", "centralized"])
    assert (run_dir / "summary.txt").read_text() != ""
    # where each start ran: the first start's entry is kept, the resume's appended
    starts = json.loads((run_dir / "machine.json").read_text())
    assert len(starts) == 2 and starts[0]["started"] <= starts[1]["started"]
    auto = resolve_precision(torch.device("cpu"), "auto")  # bf16 on CPUs with native bf16, else fp32
    assert {s["precision"] for s in starts} == {auto} and starts[1]["device"] == "cpu"
    assert starts[1]["cpu_count"] == os.cpu_count()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_or_stopped_cli_run_resumes_to_the_same_result(tiny_config, tmp_path: Path,
                                                                 stop: signal.Signals) -> None:
    """SIGKILL leaves the last checkpoint; SIGTERM (like Ctrl-C) stops with one line and exit 130.
    Either way `--resume` gives what an uninterrupted run gives."""
    cfg = config(tiny_config, rounds=8, modes=["federated"], name="killed")
    path = tmp_path / "killed.toml"
    path.write_text(dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "fedcustom", "run", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run_dir = wait_for_round(Path(cfg.output_dir), "killed-", 1, proc)
        os.kill(proc.pid, stop)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    if stop == signal.SIGTERM:
        assert proc.returncode == 130
        # progress bars may still be clearing their lines around it: find the message, no traceback
        assert any(line.startswith("fedcustom: stopped; every completed round") for line in err.splitlines())
        assert "Traceback" not in err
    ckpt = load_checkpoint(run_dir / "federated" / CHECKPOINT)
    assert ckpt is not None and 1 <= ckpt.round < 8, "the run was not killed mid-way"

    assert main(["run", "--resume", str(run_dir)]) == 0
    reference = run_experiment(dataclasses.replace(cfg, name="reference"), **QUIET)["federated"].path.parent
    assert_same(run_dir, reference, ["federated"])


def wait_for_round(output_dir: Path, prefix: str, server_round: int, proc: subprocess.Popen) -> Path:
    """The run folder, once its federated rounds.jsonl records `server_round`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        for run_dir in output_dir.glob(f"{prefix}*"):
            records = run_dir / "federated" / "rounds.jsonl"
            if records.is_file() and f'"round": {server_round},' in records.read_text():
                return run_dir
        time.sleep(0.002)
    raise AssertionError("no round recorded in time")


def test_resume_of_a_folder_that_is_no_run_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a fedcustom run folder" in err
    assert main(["run", "cfg.toml", "--resume", str(tmp_path)]) == 2
    assert "--resume takes no config file" in capsys.readouterr().err
    assert main(["run"]) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tiny_config, capsys, damage: str) -> None:
    """A truncated or bit-flipped checkpoint is never resumed from: one line names the file and
    the last round the records hold."""
    from fedcustom.cli import main

    run_dir = run_experiment(tiny_config(modes=["federated"]), log=lambda *_: None)["federated"].path.parent
    path = run_dir / "federated" / CHECKPOINT
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0x10  # one bit in the last tensor's bytes
    path.write_bytes(bytes(data))
    (run_dir / "federated" / "state.safetensors").unlink()  # as if killed before the end
    capsys.readouterr()  # the first run's progress bars
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "end at round 2" in err
    assert ("checksum mismatch" in err) == (damage == "flip")


def test_a_full_disk_stops_in_one_line_with_the_last_checkpoint_intact(tiny_config, tmp_path: Path) -> None:
    """A run whose files may not grow past the size of its round-1 checkpoint (RLIMIT_FSIZE, as a
    full disk would) stops writing round 2's: one line, exit 2, no half-written file, the round-1
    checkpoint whole; `--resume` with room again gives what an uninterrupted run gives."""
    import resource

    cfg = config(tiny_config, rounds=3, modes=["federated"], name="full")
    sizes: dict[int, int] = {}

    def measure(mode: str, record: dict[str, Any]) -> None:  # the checkpoint each round leaves
        sizes[record["round"]] = (run_dir / mode / CHECKPOINT).stat().st_size

    run_dir = tmp_path / "reference"
    run_experiment(dataclasses.replace(cfg, name="reference"), into=run_dir, on_record=measure, **QUIET)
    # a record adds hundreds of bytes to the next checkpoint; timings vary a few
    assert sizes[2] - sizes[1] > 200
    limit = (sizes[1] + sizes[2]) // 2

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    path = tmp_path / "full.toml"
    path.write_text(dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "fedcustom", "-q", "run", str(path)], preexec_fn=small_files,
                          capture_output=True, text=True, timeout=300)
    (stopped,) = Path(cfg.output_dir).glob("full-*")
    folder = stopped / "federated"
    err = [line for line in proc.stderr.splitlines() if line.startswith("fedcustom:")]  # not warnings
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(err) == 1, proc.stderr
    assert err[0] == (f"fedcustom: error: cannot write {folder / CHECKPOINT}: File too large; the last "
                      f"checkpoint in {stopped} is intact: free some space, then `fedcustom run --resume "
                      f"{stopped}` goes on")
    ckpt = load_checkpoint(folder / CHECKPOINT)
    assert ckpt is not None and ckpt.round == 1
    assert [r["round"] for r in read_records(folder)] == [0, 1]
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # nothing half-written

    assert main(["run", "--resume", str(stopped)]) == 0
    assert_same(stopped, run_dir, ["federated"])


def test_a_write_that_finds_the_disk_full_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    import errno

    from fedcustom.core.io import atomic_write

    path = tmp_path / "records.jsonl"
    atomic_write(path, "old\n")

    def half_then_full(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(OSError, match="No space left on device") as e:
        atomic_write(path, "new and longer\n")
    assert e.value.filename == str(path) and e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]
