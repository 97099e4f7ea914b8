"""A round's updates beyond the memory budget wait on disk (federation/inbox.py) with the numbers of
a round that keeps them in memory, bit for bit; the folder goes when the round ends, also on error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fedcustom.federation.inbox as inbox_module
from fedcustom.core.payload import StateFile, deserialize, serialize
from fedcustom.federation.inbox import Inbox
from fedcustom.federation.rounds import RoundFailed
from fedcustom.runs.experiment import run_experiment

TIMING = ("client_seconds", "round_seconds", "peak_rss_mb")


@pytest.fixture
def folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """Every spill folder a round made, made under tmp_path (as under TMPDIR)."""
    made: list[Path] = []
    root = tmp_path / "tmp"
    root.mkdir()
    original = tempfile.mkdtemp

    def mkdtemp(prefix: str) -> str:
        path = original(prefix=prefix, dir=root)
        made.append(Path(path))
        return path

    monkeypatch.setattr(inbox_module.tempfile, "mkdtemp", mkdtemp)
    return made


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Per round: how many updates the inbox held in memory and how many on disk."""
    seen: list[tuple[int, int]] = []
    close = Inbox.close

    def spy(self: Inbox) -> None:
        if self.updates:
            seen.append((len(self.updates) - self.spilled, self.spilled))
        close(self)

    monkeypatch.setattr(Inbox, "close", spy)
    return seen


def outcome(cfg) -> tuple[list[dict], dict[str, torch.Tensor]]:
    result = run_experiment(cfg, log=lambda *_: None)["federated"]
    records = [{k: v for k, v in r.items() if k not in TIMING} for r in result.records]
    return records, load_file(result.path / "state.safetensors")


def test_a_state_file_reads_what_deserialize_reads_one_key_at_a_time(tmp_path: Path) -> None:
    state = {"z": torch.randn(3, 4), "a": torch.arange(5, dtype=torch.int64), "m": torch.rand(2) > 0.5,
             "h": torch.randn(7, dtype=torch.float64)}
    payload = serialize(state)
    parsed = deserialize(payload)
    path = tmp_path / "u.safetensors"
    path.write_bytes(payload)
    view = StateFile(path, list(parsed))
    assert list(view) == list(parsed) and len(view) == 4
    assert view.keys() == parsed.keys() and "a" in view and "b" not in view
    for key, tensor in parsed.items():
        got = view[key]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor)
    assert view.get("b") is None
    with pytest.raises(KeyError):
        view["b"]
    kept = view["z"]
    path.unlink()  # a tensor read before the file goes is its own copy
    assert torch.equal(kept, state["z"])


def test_the_inbox_keeps_updates_within_its_budget_and_spills_the_rest(folders) -> None:
    payloads = {cid: serialize({"w": torch.full((100,), float(cid))}) for cid in range(4)}
    size = len(payloads[0])
    with Inbox(limit=10 * size, budget=2 * size) as inbox:
        for cid, payload in payloads.items():
            inbox.add(cid, payload, examples=cid + 1)
        inbox.add(9, b"not safetensors", examples=1)
        assert [type(u.state).__name__ for u in inbox.updates.values()] == ["dict", "dict", "StateFile",
                                                                              "StateFile"]
        assert inbox.spilled == 2 and len(folders) == 1
        assert sorted(p.name for p in folders[0].iterdir()) == ["2.safetensors", "3.safetensors"]
        for cid, update in inbox.updates.items():
            assert update.examples == cid + 1
            assert torch.equal(update.state["w"], torch.full((100,), float(cid)))
        assert inbox.unreadable[9].startswith("not a safetensors payload")
    assert not folders[0].exists() and inbox.updates == {}


@pytest.mark.parametrize("sections", [
    # FedAvg with the norm check rejecting a scaled update, a straggler whose update is dropped
    {"attack": {"kind": "scale", "fraction": 0.2, "scale": 1000.0}, "faults": {"stragglers": 0.2}},
    # a structurally bad update; FedAdam's server state; a sample of the clients each round
    {"method": {"name": "lora", "rank": 2}, "strategy": {"name": "fedadam"},
     "attack": {"kind": "wrong_shape", "fraction": 0.2}, "federation": {"fraction_fit": 0.8}},
    # ownership masks: the per-element mean over the clients that own each element
    {"method": {"name": "hetlora", "rank": 4, "client_ranks": [1, 2, 4]}},
    # the whole state of every client at once
    {"strategy": {"name": "median"}},
], ids=["prefix-fedavg-scaled", "lora-fedadam-wrong-shape", "hetlora-masks", "median"])
def test_spilled_updates_give_the_numbers_of_updates_in_memory(tiny_config, folders, rounds,
                                                               sections) -> None:
    def config(memory: float):
        federation = {**sections.get("federation", {}), "update_memory_mb": memory}
        return tiny_config(**{"partition": {"num_clients": 5}, "modes": ["federated"], **sections,
                              "federation": federation})

    memory_records, memory_state = outcome(config(256.0))
    assert folders == [] and all(spilled == 0 for _, spilled in rounds)  # a few KB: all in memory
    spilled_records, spilled_state = outcome(config(0.0))  # every update on disk
    assert len(folders) == 2 and not any(f.exists() for f in folders)  # one folder per round, removed
    assert all(kept == 0 for kept, _ in rounds[2:])
    first = memory_records[1]
    size = first["bytes_down"] / (first["clients"] - len(first["dropped"]))  # a state's payload
    part_records, part_state = outcome(config(2.5 * size / 2**20))  # two in memory, the rest on disk
    assert all(kept > 0 and spilled > 0 for kept, spilled in rounds[4:]), rounds
    assert memory_records == spilled_records == part_records
    for state in (spilled_state, part_state):
        assert state.keys() == memory_state.keys()
        assert all(torch.equal(state[k], memory_state[k]) for k in state)
    federated = memory_records[1:]
    assert all(r["accepted"] > 0 for r in federated)
    if "attack" in sections:  # screening rejects the bad update whether it is on disk or not
        reason = "delta norm" if sections["attack"]["kind"] == "scale" else "has shape"
        assert all(any(reason in x["reason"] for x in r["rejected"]) for r in federated)


def test_workers_spilling_give_the_numbers_of_one_process_in_memory(tiny_config, folders) -> None:
    base = {"partition": {"num_clients": 4}, "modes": ["federated"], "faults": {"stragglers": 0.3}}
    one = outcome(tiny_config(**base, workers=1))
    two = outcome(tiny_config(**base, workers=2, federation={"update_memory_mb": 0.0}))
    assert len(folders) == 2 and not any(f.exists() for f in folders)
    assert one[0] == two[0]
    assert all(torch.equal(one[1][k], two[1][k]) for k in one[1])


def test_the_spill_folder_goes_when_a_round_fails(tiny_config, folders) -> None:
    cfg = tiny_config(partition={"num_clients": 5}, modes=["federated"],
                      attack={"kind": "crash", "fraction": 0.4},
                      federation={"update_memory_mb": 0.0, "min_clients": 5})
    with pytest.raises(RoundFailed, match="3 update"):
        run_experiment(cfg, log=lambda *_: None)
    assert len(folders) == 1 and not folders[0].exists()


def test_update_memory_must_not_be_negative(tiny_config) -> None:
    from fedcustom.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"^federation.update_memory_mb = -1.0: expected a number >= 0"):
        tiny_config(federation={"update_memory_mb": -1.0})
