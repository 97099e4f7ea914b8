"""Files written whole or not at all, and run folders that never overwrite one another."""

from __future__ import annotations

import os
import time
from pathlib import Path


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
