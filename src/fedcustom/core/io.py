"""Files written whole or not at all, run folders that never overwrite one another, and a lock so
only one process writes a folder."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedcustom.core.errors import UserError

# a full disk, a full quota, or a file-size limit (RLIMIT_FSIZE)
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def atomic_write(path: Path, data: bytes | str) -> None:
    """`path` holds `data` whole, or (the write failed: a full disk) what it held before."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in FULL:  # a failed write() names no file: name the one being written
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


@contextmanager
def storage_full_stops(then: str) -> Iterator[None]:
    """A write that fails for want of space becomes one line (a UserError): what could not be
    written, and `then`, what the user can do about it."""
    try:
        yield
    except OSError as e:
        if e.errno not in FULL:
            raise
        raise UserError(f"cannot write {e.filename or 'a file'}: {e.strerror}; {then}") from None


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """OUTPUT_DIR/NAME-YYYYmmdd-HHMMSS (with a suffix if taken): a run never overwrites another."""
    base = Path(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def check_writable(folder: Path) -> None:
    """Fail now, in one line, if results could not be written under `folder` (before any model
    loads): the folder, or the nearest existing folder above it, must be writable."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write results under {folder}: {existing} is not a writable folder")


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold `folder`/.lock for the duration: a second fedcustom process that would write the same
    run or study folder stops in one line instead of interleaving its files."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder} is being written by another fedcustom process; wait for it to "
                            "finish or use another folder") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
