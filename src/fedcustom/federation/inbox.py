"""A round's client updates as they arrive: parsed at once, kept in memory up to a budget, and
beyond it left on disk until the round ends.

Why a spill and not a running sum: screening needs every update before any is aggregated (an
update is rejected when it lies too far from the median of all the round's distances), and
robust strategies need every client's value of a tensor at once; folding updates into a sum as
they arrive would change which are accepted, and training the clients twice (a pass for the
distances, one for the sum) would double the work. So each payload is parsed once, when its
reply reaches the server (its bytes are dropped right after: no client's bytes and tensors are
held together beyond that one client), and the update is kept: in memory while the payloads kept
so far total at most the budget (federation.update_memory_mb), else as its payload bytes in a
file of a temporary folder, read back one tensor per lookup (core.payload.StateFile). Screening
and the mean-based strategies go key by key over the updates, so a spilled round holds about one
tensor of one client at a time; the tensors are the same bytes as in memory, so the same float64
products are summed in the same order and every number is bit for bit what it is in memory.

The folder is made in the system temp dir (tempfile: TMPDIR picks another disk), not in the run
folder: every caller of the round loop has one (the RAG tuner and the tests have no run folder),
and a process killed hard leaves nothing among a run's records and checkpoints, which are
committed and uploaded as artifacts. Where the temp dir is in memory (tmpfs), point TMPDIR at a
disk, or spilled updates still take RAM (outside the process's RSS). The folder is removed when
the round's updates have been aggregated, or on any error before.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from fedcustom.core.payload import StateFile, unpack
from fedcustom.core.types import Update


class Inbox:
    """One round's parsed updates by client id, and why the unreadable ones could not be parsed."""

    def __init__(self, limit: int, budget: int) -> None:
        self.limit = limit  # the largest payload parsed, in bytes
        self.budget = budget  # payload bytes kept in memory; the updates beyond go to disk
        self.kept = 0  # payload bytes kept in memory so far
        self.updates: dict[int, Update] = {}
        self.unreadable: dict[int, str] = {}
        self.folder: Path | None = None  # made at the first update that goes to disk
        self.spilled = 0  # updates on disk

    def add(self, cid: int, payload: bytes, examples: int) -> None:
        """Client `cid`'s payload, worth `examples` examples: parsed (or its reason recorded)."""
        try:
            state = unpack(payload, self.limit)  # parsed whole: bad bytes are found here either way
        except ValueError as e:
            self.unreadable[cid] = str(e)
            return
        if self.kept + len(payload) <= self.budget:
            self.kept += len(payload)
            self.updates[cid] = Update(state, examples)
            return
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="fedcustom-updates-"))
        path = self.folder / f"{cid}.safetensors"
        path.write_bytes(payload)
        self.updates[cid] = Update(StateFile(path, list(state)), examples)
        self.spilled += 1

    def close(self) -> None:
        """Forget the updates and remove the folder (a StateFile's tensors are copies: any still
        referenced stay valid)."""
        self.updates.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
