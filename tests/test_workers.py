"""The in-process engine's worker processes: the same records and final state as one process."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import fedcustom.engines.workers as workers
import fedcustom.federation.local as local
from fedcustom.core.config import ConfigError
from fedcustom.engines.simulation import SimulationEngine
from fedcustom.engines.workers import WorkerDied, assign
from fedcustom.federation.attacks import ClientCrash
from fedcustom.runs.experiment import resume_experiment, run_experiment

TIMING = ("client_seconds", "round_seconds", "peak_rss_mb")


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every worker pool that started."""
    started: list[int] = []
    start = workers.WorkerPool.start

    def spy(self: workers.WorkerPool) -> None:
        started.append(self.size)
        start(self)

    monkeypatch.setattr(workers.WorkerPool, "start", spy)
    return started


@pytest.fixture
def deadline() -> Iterator[None]:
    """A hung run fails the test instead of the suite."""

    def expire(*_: object) -> None:
        raise TimeoutError("the run hung")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def outcome(cfg) -> tuple[dict, dict]:
    results = run_experiment(cfg, log=lambda *_: None)
    records = {mode: [{k: v for k, v in r.items() if k not in TIMING} for r in result.records]
               for mode, result in results.items()}
    states = {mode: load_file(result.path / "state.safetensors") for mode, result in results.items()}
    return records, states


@pytest.mark.parametrize("sections", [
    # dropout in the tiny BERT; a crashing client and a straggler; the centralized mode (one client)
    {"attack": {"kind": "crash", "fraction": 0.25}, "faults": {"stragglers": 0.3},
     "modes": ["federated", "centralized"]},
    # LoRA with its own dropout; FedAdam's server state; a sample of the clients each round
    {"method": {"name": "lora", "rank": 2, "dropout": 0.1}, "strategy": {"name": "fedadam"},
     "federation": {"fraction_fit": 0.75}},
], ids=["prefix-fedavg-crash", "lora-fedadam"])
def test_two_workers_give_the_numbers_of_one_process(tiny_config, pools, deadline, sections) -> None:
    base = {"partition": {"num_clients": 4}, "modes": ["federated"], **sections}
    one_records, one_states = outcome(tiny_config(**base, workers=1))
    two_records, two_states = outcome(tiny_config(**base, workers=2))
    assert pools == [2]  # once per run, and never for the centralized mode's one client
    assert one_records == two_records
    for mode, state in one_states.items():
        assert state.keys() == two_states[mode].keys()
        assert all(torch.equal(state[k], two_states[mode][k]) for k in state)
    federated = one_records["federated"]
    assert all(r["accepted"] > 0 for r in federated[1:])
    if "attack" in sections:
        assert any("ClientCrash" in x["reason"] for r in federated[1:] for x in r["rejected"])
    assert not multiprocessing.active_children()


def dies_on(cid: int, update):
    """`update`, except that the process exits on client `cid`: as a process killed mid-round, no
    reply and no exception."""
    def update_or_die(clients, state, ctx):
        if ctx.cid == cid:
            os._exit(3)
        return update(clients, state, ctx)
    return update_or_die


def local_numbers(cfg) -> list[dict]:
    records = run_experiment(cfg, log=lambda *_: None)["local"].records
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_local_mode_in_two_workers_gives_the_numbers_of_one_process(tiny_config, pools, deadline) -> None:
    base = {"partition": {"num_clients": 5}, "modes": ["local"],
            "method": {"name": "lora", "rank": 2, "dropout": 0.1}}
    one = local_numbers(tiny_config(**base, workers=1))
    two = local_numbers(tiny_config(**base, workers=2))
    assert pools == [2]
    assert one == two and one[-1]["clients"] == 5
    assert not multiprocessing.active_children()


def test_a_local_worker_that_dies_keeps_the_finished_clients(tiny_config, deadline, monkeypatch) -> None:
    train = local.client_update
    whole = local_numbers(tiny_config(partition={"num_clients": 4}, modes=["local"]))

    monkeypatch.setattr(local, "client_update", dies_on(3, train))  # the forked workers see it
    cfg = tiny_config(workers=2, partition={"num_clients": 4}, modes=["local"])
    with pytest.raises(WorkerDied, match=r"local mode: simulation worker \d+ died \(exit code 3\) while "
                                         r"training clients \[(3, \d|\d, 3)\]"):
        run_experiment(cfg, log=lambda *_: None)
    assert not multiprocessing.active_children()
    run_dir = next(d for d in Path(cfg.output_dir).iterdir() if not (d / "local" / "rounds.jsonl").exists())
    saved = json.loads((run_dir / "local" / "clients.json").read_text())
    assert "3" not in saved and saved  # what finished before the death is kept
    monkeypatch.setattr(local, "client_update", train)
    again = resume_experiment(run_dir, log=lambda *_: None)["local"].records
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in again] == whole


def test_a_round_where_every_client_fails_raises_their_error(tiny_config, deadline) -> None:
    cfg = tiny_config(workers=2, attack={"kind": "crash", "fraction": 1.0}, modes=["federated"])
    with pytest.raises(ClientCrash, match="simulated crash of client 0") as raised:
        run_experiment(cfg, log=lambda *_: None)
    assert isinstance(raised.value.__cause__, workers.WorkerTraceback)
    assert "ClientCrash" in str(raised.value.__cause__)
    assert not multiprocessing.active_children()


def test_a_worker_that_dies_stops_the_run_with_a_clear_error(tiny_config, deadline, monkeypatch) -> None:
    # the forked workers see it
    monkeypatch.setattr(workers, "client_update", dies_on(1, workers.client_update))
    cfg = tiny_config(workers=2, partition={"num_clients": 4}, modes=["federated"])
    with pytest.raises(WorkerDied, match=r"round 1: simulation worker \d+ died \(exit code 3\) while "
                                         r"training clients \[(1, \d|\d, 1)\]"):
        run_experiment(cfg, log=lambda *_: None)
    assert not multiprocessing.active_children()  # the other worker is stopped too


def test_a_worker_that_fails_outside_a_client_raises_its_traceback(tiny_config, deadline,
                                                                   monkeypatch) -> None:
    def unreadable(_: bytes):
        raise ValueError("cannot read the global state")

    monkeypatch.setattr(workers, "deserialize", unreadable)  # only the workers read it there
    cfg = tiny_config(workers=2, modes=["federated"])
    with pytest.raises(RuntimeError, match=r"(?s)round 1: simulation worker \d+ failed:.*ValueError: "
                                           r"cannot read the global state"):
        run_experiment(cfg, log=lambda *_: None)
    assert not multiprocessing.active_children()


def test_workers_setting(tiny_config) -> None:
    assert SimulationEngine.from_config(tiny_config()).workers == 1
    assert SimulationEngine.from_config(tiny_config(workers=0)).workers == workers.cores()
    with pytest.raises(ConfigError, match=r"^workers = -1: expected an integer >= 0"):
        tiny_config(workers=-1)
    with pytest.raises(ConfigError, match=r"^workers = 2: expected 1 with engine 'flower'"):
        tiny_config(workers=2, engine="flower")


class FakeClients(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.rows)


def test_methods_with_client_state_and_single_clients_train_in_process() -> None:
    def clients(n: int, own_models: bool = False, device: str = "cpu") -> FakeClients:
        return FakeClients(method=SimpleNamespace(name="m", own_client_models=own_models),
                           model=torch.nn.Linear(1, 1, device=device), rows=[[0]] * n)

    engine = SimulationEngine(workers=4)
    assert engine.pool_size(clients(10)) == 4
    assert engine.pool_size(clients(3)) == 3
    assert engine.pool_size(clients(1)) == 1  # the centralized baseline
    assert engine.pool_size(clients(10, own_models=True)) == 1  # distillation keeps client models
    assert engine.pool_size(clients(10, device="meta")) == 1  # as a model on a GPU: not on the CPU


def test_clients_are_balanced_over_workers_by_size() -> None:
    assert assign([0, 1, 2, 3, 4], [5, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4]]
    assert assign([1, 3, 5, 7], [2] * 8, 2) == [[1, 5], [3, 7]]
    assert assign([2], [1, 1, 1], 3) == [[2], [], []]
