"""Bad client updates are rejected and recorded; simulated attacks do what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedcustom.core.config import ConfigError
from fedcustom.core.types import Update
from fedcustom.data.batching import Encoded
from fedcustom.federation.attacks import Attack, choose_malicious, tamper
from fedcustom.federation.screening import delta_norm, screen_updates, structural_problem
from fedcustom.runs.experiment import run_experiment

QUIET = {"log": lambda *_: None}


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --- federation/screening.py -----------------------------------------------------------------------------

GLOBAL = {"a": t(0, 0), "b": t(1)}


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"a": t(1, 2), "b": t(3)}, None),
        ({"a": t(1, 2)}, "missing ['b'], unexpected []"),
        ({"a": t(1, 2), "b": t(3), "c": t(0)}, "missing [], unexpected ['c']"),
        ({"a": t(1, 2, 3), "b": t(3)}, "a has shape (3,), expected (2,)"),
        ({"a": t(1, 2), "b": torch.tensor([3.0], dtype=torch.float64)}, "b has dtype torch.float64"),
        ({"a": t(1, math.nan), "b": t(3)}, "a has non-finite values"),
        ({"a": t(1, 2), "b": t(-math.inf)}, "b has non-finite values"),
    ],
)
def test_structural_checks(update: dict[str, torch.Tensor], reason: str | None) -> None:
    problem = structural_problem(GLOBAL, update)
    assert problem == reason if reason is None else reason in problem


def test_delta_norm_spans_all_tensors() -> None:
    assert delta_norm(GLOBAL, {"a": t(3, 0), "b": t(5)}) == 5.0  # sqrt(3^2 + 4^2)


def test_norm_outlier_is_rejected_relative_to_the_median() -> None:
    g = {"w": t(0, 0)}
    updates = {0: Update({"w": t(1, 0)}, 5), 1: Update({"w": t(0, 2)}, 5), 2: Update({"w": t(0, 30)}, 5),
               3: Update({"w": t(math.nan, 0)}, 5)}
    # norms of the structurally valid three: 1, 2, 30; median 2; 30 > 10 x 2 but 2 <= 20
    accepted, rejected = screen_updates(g, updates, max_norm_factor=10.0)
    assert [u.state["w"].tolist() for u in accepted] == [[1, 0], [0, 2]]
    assert [r["client"] for r in rejected] == [2, 3]
    assert "delta norm 30 > 10 x the round's median 2" in rejected[0]["reason"]
    # 0 turns the norm check off; fewer than three valid updates give no median to trust
    assert len(screen_updates(g, updates, max_norm_factor=0)[0]) == 3
    assert len(screen_updates(g, {0: updates[0], 2: updates[2]}, max_norm_factor=10.0)[0]) == 2


def test_every_update_rejected_leaves_nothing_to_aggregate() -> None:
    updates = {4: Update({"v": t(1)}, 1), 7: Update({"w": t(math.inf)}, 1)}
    accepted, rejected = screen_updates({"w": t(0)}, updates, 10.0)
    assert accepted == [] and [r["client"] for r in rejected] == [4, 7]


# --- federation/attacks.py --------------------------------------------------------------------------------

def test_malicious_clients_are_a_fixed_draw_from_the_seed() -> None:
    assert choose_malicious(5, 0.2, seed=0) == choose_malicious(5, 0.2, seed=0)
    assert len(choose_malicious(5, 0.2, 0)) == 1 and len(choose_malicious(10, 0.25, 0)) == 3
    assert len(choose_malicious(5, 0.01, 0)) == 1  # at least one
    assert choose_malicious(4, 1.0, 3) == [0, 1, 2, 3]
    assert len({tuple(choose_malicious(10, 0.3, s)) for s in range(5)}) > 1


def test_tampering_moves_the_delta() -> None:
    g, honest = {"w": t(1, 1)}, {"w": t(2, 0)}  # delta (1, -1)
    assert tamper("sign_flip", 10.0, g, honest)["w"].tolist() == [0, 2]
    assert tamper("scale", 10.0, g, honest)["w"].tolist() == [11, -9]
    assert tamper("scale", -2.0, g, honest)["w"].tolist() == [-1, 3]
    assert torch.isnan(tamper("nan", 1.0, g, honest)["w"]).all()
    assert tamper("inf", 1.0, g, honest)["w"].tolist() == [math.inf, 0]
    assert honest["w"].tolist() == [2, 0]  # the client's own state is left alone
    assert set(tamper("wrong_keys", 1.0, g, honest)) == {"w.renamed"}
    assert tamper("wrong_shape", 1.0, g, honest)["w"].shape == (3,)


def test_label_flip_trains_the_malicious_client_on_shifted_labels() -> None:
    data = Encoded(torch.zeros(6, 4, dtype=torch.long), torch.full((6,), 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    attack = Attack("label_flip", malicious=[1], num_labels=3)
    seen: dict[int, Encoded] = {}

    def fit_as(cid: int):
        def fit(d: Encoded) -> tuple[dict[str, torch.Tensor], None]:
            seen[cid] = d
            return {"w": t(float(cid))}, None
        return fit

    for cid in (0, 1, 1):
        state, _ = attack.client_update(cid, {"w": t(0)}, data, fit_as(cid))
        assert state["w"].tolist() == [cid]  # label_flip leaves the returned state alone
    assert seen[0] is data
    assert seen[1].labels.tolist() == [1, 2, 0, 1, 2, 0]
    assert seen[1].input_ids is data.input_ids  # the token matrix is shared, not copied
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_attack_config_errors(tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"attack.fraction = 1.5: expected a number in \(0, 1\]"):
        tiny_config(attack={"kind": "sign_flip", "fraction": 1.5})
    with pytest.raises(ConfigError, match="attack.kind = 'backdoor': expected one of"):
        tiny_config(attack={"kind": "backdoor"})
    with pytest.raises(ConfigError, match="federation.max_norm_factor = 0.5: expected 0 .off. or"):
        tiny_config(federation={"max_norm_factor": 0.5})


# --- whole runs --------------------------------------------------------------------------------

def five_clients(tiny_config, **sections):
    return tiny_config(partition={"num_clients": 5}, modes=["federated"], **sections)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("nan", "non-finite"), ("inf", "non-finite"), ("wrong_keys", "keys differ"),
     ("wrong_shape", "has shape"), ("scale", "delta norm"), ("crash", "client failed")],
)
def test_bad_updates_are_rejected_and_the_round_goes_on(tiny_config, kind: str, reason: str) -> None:
    cfg = five_clients(tiny_config, attack={"kind": kind, "fraction": 0.2, "scale": 1000.0})
    result = run_experiment(cfg, **QUIET)["federated"]
    malicious = result.records[0]["malicious"]
    assert len(malicious) == 1
    for r in result.records[1:]:
        assert r["clients"] == 5 and r["accepted"] == 4
        assert [x["client"] for x in r["rejected"]] == malicious
        assert reason in r["rejected"][0]["reason"]
    assert result.records[1]["test_loss"] != result.records[0]["test_loss"]  # the honest four count
    state = load_file(result.path / "state.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())


def test_a_round_with_every_update_rejected_keeps_the_global_state(tiny_config) -> None:
    cfg = five_clients(tiny_config, attack={"kind": "nan", "fraction": 1.0})
    records = run_experiment(cfg, **QUIET)["federated"].records
    assert records[0]["malicious"] == [0, 1, 2, 3, 4]
    assert [r["accepted"] for r in records[1:]] == [0, 0]
    assert all(len(r["rejected"]) == 5 for r in records[1:])
    assert {r["test_loss"] for r in records} == {records[0]["test_loss"]}


def test_a_round_where_every_client_crashes_is_an_error_not_a_silent_skip(tiny_config) -> None:
    from fedcustom.federation.attacks import ClientCrash

    with pytest.raises(ClientCrash, match="simulated crash"):
        run_experiment(five_clients(tiny_config, attack={"kind": "crash", "fraction": 1.0}), **QUIET)


def test_honest_runs_record_no_rejections(tiny_config) -> None:
    records = run_experiment(five_clients(tiny_config), **QUIET)["federated"].records
    assert "malicious" not in records[0]
    assert all(r["accepted"] == 5 and r["rejected"] == [] for r in records[1:])


def test_median_withstands_sign_flips_better_than_fedavg(tiny_config) -> None:
    def final(strategy: str, kind: str) -> dict[str, torch.Tensor]:
        # Several local epochs at a small lr: honest clients then agree on a direction, which a
        # sign flip can reverse (after one or two Adam steps each delta is mostly noise).
        cfg = five_clients(tiny_config, strategy={"name": strategy}, attack={"kind": kind, "fraction": 0.4},
                           train={"local_epochs": 5, "lr": 0.01})
        return load_file(run_experiment(cfg, **QUIET)["federated"].path / "state.safetensors")

    honest = final("fedavg", "none")
    fedavg = delta_norm(honest, final("fedavg", "sign_flip"))
    median = delta_norm(honest, final("median", "sign_flip"))
    # 2 of 5 flipped: fedavg keeps about a fifth of the honest step, the median most of it
    # (recorded: 1.69 vs 1.19)
    assert np.isfinite(fedavg) and median < 0.85 * fedavg


def test_label_flip_on_every_client_teaches_the_opposite(tiny_config) -> None:
    def accuracy(attack: dict[str, object]) -> float:
        cfg = tiny_config(modes=["federated"], attack=attack, federation={"rounds": 3})
        return run_experiment(cfg, **QUIET)["federated"].records[-1]["test_accuracy"]

    flipped, honest = accuracy({"kind": "label_flip", "fraction": 1.0}), accuracy({})
    assert flipped < 0.5 < honest  # two labels: label + 1 mod 2 swaps them (recorded: 0.03, 0.93)


# --- unreadable client payloads ------------------------------------------------------------------

def test_unpack_refuses_oversized_and_malformed_payloads_before_parsing() -> None:
    from fedcustom.core.payload import serialize, unpack

    good = serialize({"w": t(1, 2)})
    assert unpack(good, len(good))["w"].tolist() == [1, 2]
    with pytest.raises(ValueError, match=f"{len(good) + 1:,} bytes, over the limit of {len(good):,}"):
        unpack(good + b"x", len(good))
    with pytest.raises(ValueError, match="not a safetensors payload"):
        unpack(b"\x00" * 16, 1000)
    with pytest.raises(ValueError, match="not a safetensors payload"):
        unpack(good[: len(good) // 2], 1000)


@pytest.mark.parametrize("memory", [256.0, 0.0], ids=["in-memory", "spilled"])
def test_a_round_rejects_an_unreadable_update_and_goes_on(tiny_config, monkeypatch, memory) -> None:
    """A client whose bytes are garbage or oversized, whose state does not fit the global one or
    who claims no examples is recorded as rejected with the reason; the other clients' updates are
    aggregated. (The in-process engine always sends good bytes: the clients' replies are damaged
    on their way to the server's loop.)"""
    import fedcustom.engines.simulation as simulation
    from fedcustom.core.payload import deserialize, serialize
    from fedcustom.federation.replies import payload_limit
    from fedcustom.federation.rounds import run_rounds
    from fedcustom.runs.experiment import run_experiment

    def damaging(job, train_clients):
        def train(server_round, down, cids, instructions, receive):
            def damage(cid, reply):  # on its way from the engine to the round
                if cid == 0:
                    reply.update = b"not safetensors"
                elif cid == 1:
                    reply.update = b"\0" * (payload_limit(len(down)) + 1)
                elif cid == 2:
                    state = deserialize(reply.update)
                    key = sorted(state)[0]
                    reply.update = serialize({**state, key: state[key].reshape(-1)})
                elif cid == 3:
                    reply.examples = 0
                return receive(cid, reply)
            return train_clients(server_round, down, cids, instructions, damage)
        return run_rounds(job, train)

    monkeypatch.setattr(simulation, "run_rounds", damaging)
    cfg = tiny_config(partition={"num_clients": 5}, modes=["federated"],
                      federation={"update_memory_mb": memory})
    records = run_experiment(cfg, log=lambda *_: None)["federated"].records
    for r in records[1:]:
        reasons = {x["client"]: x["reason"] for x in r["rejected"]}
        assert reasons[0].startswith("unreadable update: not a safetensors payload")
        assert "over the limit" in reasons[1]
        assert "has shape" in reasons[2]
        assert reasons[3] == "claims 0 training examples; expected at least 1"
        assert r["accepted"] == 1
