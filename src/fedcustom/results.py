"""Run folders: resolved config, per-round records (JSON lines + CSV), final state and adapter.

Everything is written atomically (temp file, then rename), so a crash never leaves a
half-written file behind: a record is either in rounds.jsonl whole or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from safetensors.torch import save

from fedcustom.methods.base import Method, State


def atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """OUTPUT_DIR/NAME-YYYYmmdd-HHMMSS (with a suffix if taken): a run never overwrites another."""
    base = Path(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def records_csv(records: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for record in records:
        columns += [k for k in record if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


class RunWriter:
    """Writes one mode's results (federated or centralized) into its folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []

    def add_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        jsonl = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.path / "rounds.jsonl", jsonl)
        atomic_write(self.path / "rounds.csv", records_csv(self.records))

    def save_final(self, method: Method, model: Any, state: State) -> None:
        """The raw exchanged state (resumable) and the PEFT-format adapter (portable)."""
        atomic_write(self.path / "state.safetensors", save({k: v.contiguous() for k, v in state.items()}))
        tmp = self.path / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        method.set_state(model, state)
        method.save_adapter(model, tmp)
        shutil.rmtree(self.path / "adapter", ignore_errors=True)
        os.replace(tmp, self.path / "adapter")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(path) / "rounds.jsonl").read_text().splitlines()]
