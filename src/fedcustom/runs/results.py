"""Run folders: resolved config, per-round records (JSON lines + CSV), checkpoints, final state
and adapter.

Everything is written atomically (temp file, then rename), so a crash never leaves a
half-written file behind: a record is either in rounds.jsonl whole or not at all. After every
round a mode's folder gets checkpoint.safetensors: the global state, the strategy's own state,
the records so far and the round number, all in one file, so a killed run resumes from the last
completed round (`fedcustom run --resume RUN_DIR`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from fedcustom.core.errors import UserError
from fedcustom.core.io import atomic_write
from fedcustom.core.types import State
from fedcustom.methods.base import Method

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "fedcustom-checkpoint-1"
METADATA = {"format", "round", "records", "sha256"}  # every field a checkpoint's header holds


def records_csv(records: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for record in records:
        columns += [k for k in record if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


@dataclass
class Checkpoint:
    round: int  # the last completed round (0: only the initial evaluation)
    state: State  # the global state after that round
    strategy_state: dict[str, torch.Tensor]
    records: list[dict[str, Any]]


def checksum(tensors: dict[str, torch.Tensor], round_: str, records: str) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name) and the metadata
    that matters: a truncated or bit-flipped checkpoint is refused, never resumed from."""
    h = hashlib.sha256(f"{round_}\n{records}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    tensors = {**{f"global/{k}": v.detach().contiguous() for k, v in ckpt.state.items()},
               **{f"strategy/{k}": v.detach().contiguous() for k, v in ckpt.strategy_state.items()}}
    records = json.dumps(ckpt.records)
    metadata = {"format": CHECKPOINT_FORMAT, "round": str(ckpt.round), "records": records,
                "sha256": checksum(tensors, str(ckpt.round), records)}
    atomic_write(path, save(tensors, metadata=metadata))


def corrupt(path: Path, why: str) -> UserError:
    last = path.parent / "rounds.jsonl"
    done = len(last.read_bytes().splitlines()) - 1 if last.is_file() else -1
    told = f"the records in {last} end at round {done}" if done >= 0 else "no round is recorded"
    return UserError(f"{path} is corrupt ({why}); {told}: delete the checkpoint to run this mode again "
                     "from its start")


def load_checkpoint(path: Path) -> Checkpoint | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except Exception as e:  # noqa: BLE001 - safetensors reports a damaged file in several ways
        raise corrupt(path, (str(e).splitlines() or [type(e).__name__])[0][:120]) from None
    # A damaged header can still parse: every field must be there as written (a flipped bit in a
    # key's name would otherwise hide the checksum). Older checkpoints carry no checksum: they
    # are read as before.
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise corrupt(path, f"format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    if not {"round", "records"} <= meta.keys() <= METADATA:
        raise corrupt(path, f"metadata fields {sorted(meta)}, expected {sorted(METADATA)}")
    expected = meta.get("sha256")
    if expected is not None and expected != checksum(tensors, meta["round"], meta["records"]):
        raise corrupt(path, "checksum mismatch")
    if not all(k.startswith(("global/", "strategy/")) for k in tensors):
        raise corrupt(path, "a tensor outside global/ and strategy/")
    try:
        done, records = int(meta["round"]), json.loads(meta["records"])
    except ValueError as e:  # only an old checkpoint without a checksum gets here
        raise corrupt(path, f"unreadable metadata ({str(e)[:80]})") from None

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    return Checkpoint(done, part("global/"), part("strategy/"), records)


class RunWriter:
    """Writes one mode's results (federated or centralized) into its folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []

    def load_checkpoint(self) -> Checkpoint | None:
        """The mode's last checkpoint, with its records taken as this writer's (None: start afresh)."""
        ckpt = load_checkpoint(self.path / CHECKPOINT)
        if ckpt is not None:
            self.records = list(ckpt.records)
            self.write_records()  # rounds.jsonl may be a round behind the checkpoint
        return ckpt

    def add_round(self, record: dict[str, Any], state: State,
                  strategy_state: dict[str, torch.Tensor]) -> None:
        """Checkpoint first, then the readable records: a kill in between loses no round."""
        self.records.append(record)
        ckpt = Checkpoint(record["round"], state, strategy_state, self.records)
        save_checkpoint(self.path / CHECKPOINT, ckpt)
        self.write_records()

    def best_round(self) -> int | None:
        """The round of the adapter in best/ (None: none saved)."""
        path = self.path / "best" / "round.json"
        return json.loads(path.read_text())["round"] if path.is_file() else None

    def write_records(self) -> None:
        jsonl = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.path / "rounds.jsonl", jsonl)
        atomic_write(self.path / "rounds.csv", records_csv(self.records))

    def save_final(self, method: Method, model: Any, state: State) -> None:
        """The raw exchanged state (resumable) and the PEFT-format adapter (portable)."""
        atomic_write(self.path / "state.safetensors", save({k: v.contiguous() for k, v in state.items()}))
        self.save_adapter(method, model, state, self.path / "adapter")

    def save_snapshot(self, method: Method, model: Any, server_round: int) -> None:
        """The server's model as it stands after `server_round` (the method has adopted that
        round's state), exported into snapshots/round-NNNN (federation.save_every)."""
        (self.path / "snapshots").mkdir(exist_ok=True)
        self.save_adapter(method, model, None, self.path / "snapshots" / f"round-{server_round:04d}")

    def save_best(self, method: Method, model: Any, record: dict[str, Any], state: State,
                  adopted: bool = True) -> None:
        """The model after `record`'s round, the best on validation so far, into best/
        (federation.save_best): its adapter, its raw `state` and best/round.json with the round and
        its metrics, replaced together. `adopted`: the model already holds `state` (the round loop)."""
        metrics = {k: v for k, v in record.items() if k == "round" or k.startswith(("val_", "test_"))}
        self.save_adapter(method, model, None if adopted else state, self.path / "best", {
            "state.safetensors": save({k: v.contiguous() for k, v in state.items()}),
            "round.json": (json.dumps(metrics, indent=1) + "\n").encode()})

    @staticmethod
    def save_adapter(method: Method, model: Any, state: State | None, dest: Path,
                     extra: dict[str, bytes] | None = None) -> None:
        """`state` (None: the model's own) exported by the method, with `extra` files beside it;
        `dest` is replaced whole or not at all."""
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if state is not None:
            method.set_state(model, state)
        method.save_adapter(model, tmp)
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(path) / "rounds.jsonl").read_text().splitlines()]
