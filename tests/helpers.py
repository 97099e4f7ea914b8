"""Small builders shared by tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomli_w

from fedcustom.core.types import State, Update


def updates(pairs: list[tuple[State, int]]) -> list[Update]:
    """Updates from (state, examples) pairs, as hand-written in strategy tests."""
    return [Update(state, n) for state, n in pairs]


def record(round_: int, accuracy: float | None = None, up: int = 60, down: int = 40,
           **metrics: float) -> dict[str, Any]:
    """One round's record as a run writes it. accuracy None: a round that was not evaluated
    (federation.eval_every), so it has no test_* keys; `metrics` are further test/val keys of
    an evaluated round. Rounds 1 on send `down` + `up` bytes."""
    out: dict[str, Any] = {"round": round_}
    if accuracy is not None:
        out |= {"test_accuracy": accuracy, "test_macro_f1": accuracy - 0.1, "test_loss": 1 - accuracy,
                **metrics}
    if round_ > 0:
        out |= {"train_loss": 0.5, "clients": 2, "accepted": 2, "rejected": [], "bytes_down": down,
                "bytes_up": up, "client_seconds": 2.0, "round_seconds": 1.5, "peak_rss_mb": 300.0}
    return out


def write_run_folder(path: Path, config: dict[str, Any], modes: dict[str, list[dict[str, Any]]]) -> Path:
    """A run folder as a run leaves it: config.toml, and rounds.jsonl in one folder per mode."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(tomli_w.dumps({**config, "modes": list(modes)}))
    for mode, records in modes.items():
        (path / mode).mkdir()
        (path / mode / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
