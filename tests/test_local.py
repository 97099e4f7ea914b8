"""Local-only training (federation/local.py, the `local` mode), evaluation every N rounds and the
centralized baseline's early stopping (federation/rounds.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedcustom.core.config import ConfigError
from fedcustom.federation.local import local_records, local_sample
from fedcustom.federation.rounds import evaluated, stalled
from fedcustom.runs.experiment import resume_experiment, run_experiment

TIMES = ("client_seconds", "round_seconds", "peak_rss_mb")


def numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in records]


def test_local_records_by_hand() -> None:
    per_client = {0: {2: {"test_accuracy": 0.5, "test_loss": 1.0, "train_loss": 0.7,
                          "client_seconds": 1.0, "round_seconds": 2.0}},
                  1: {2: {"test_accuracy": 0.9, "test_loss": 0.5, "train_loss": 0.3,
                          "client_seconds": 3.0, "round_seconds": 4.0}}}
    records = local_records(per_client, {0: 30, 1: 10}, {"test_accuracy": 0.4})
    assert records[0] == {"round": 0, "test_accuracy": 0.4}
    r = records[1]
    assert r["round"] == 2 and r["clients"] == 2
    assert r["test_accuracy"] == pytest.approx(0.7)  # (0.5 + 0.9) / 2
    assert r["test_accuracy_weighted"] == pytest.approx(0.6)  # (30 * 0.5 + 10 * 0.9) / 40
    assert (r["test_accuracy_min"], r["test_accuracy_max"]) == (0.5, 0.9)
    assert r["test_loss"] == pytest.approx(0.75) and "test_loss_min" not in r
    assert (r["client_seconds"], r["round_seconds"], r["bytes_up"], r["bytes_down"]) == (4.0, 6.0, 0, 0)


def test_one_client_alone_is_the_centralized_run(tiny_config) -> None:
    """With one client holding all the data, local-only training is centralized training: same
    rows, seeds and schedule, so the same numbers (up to float rounding: the centralized run goes
    through FedAvg's float64 mean of its one update)."""
    cfg = tiny_config(modes=["centralized", "local"], partition={"num_clients": 1})
    out = run_experiment(cfg, log=lambda *_: None)
    loc = out["local"].records
    assert [r["round"] for r in loc] == [0, 2]  # local runs are evaluated after their last round
    cen = [r for r in out["centralized"].records if r["round"] in (0, 2)]
    for c, one in zip(cen, loc, strict=True):
        assert one["test_accuracy"] == c["test_accuracy"]
        assert one["test_loss"] == pytest.approx(c["test_loss"], rel=1e-5)
        if c["round"]:
            assert one["test_accuracy_min"] == one["test_accuracy_max"] == c["test_accuracy"]
    # the one record after round 2 carries the work of both rounds, as the centralized ones add up
    for key in ("forward_passes", "backward_passes"):
        assert loc[1][key] == sum(r[key] for r in out["centralized"].records if r["round"]) > 0


def test_local_mode_resumes_after_the_last_finished_client(tiny_config) -> None:
    cfg = tiny_config(modes=["local"], partition={"num_clients": 3})
    path = run_experiment(cfg, log=lambda *_: None)["local"].path
    whole = (path / "rounds.jsonl").read_text()
    saved = json.loads((path / "clients.json").read_text())
    assert sorted(saved) == ["0", "1", "2"]
    # as if killed while client 2 trained: rounds.jsonl not yet written, clients 0 and 1 saved
    (path / "clients.json").write_text(json.dumps({c: saved[c] for c in ("0", "1")}))
    (path / "rounds.jsonl").unlink()
    again = resume_experiment(path.parent, log=lambda *_: None)["local"].records
    assert numbers(again) == numbers([json.loads(x) for x in whole.splitlines()])


def test_evaluated_rounds() -> None:
    assert [r for r in range(1, 11) if evaluated(r, 4, 10)] == [4, 8, 10]
    assert [r for r in range(1, 4) if evaluated(r, 1, 3)] == [1, 2, 3]


def test_eval_every_skips_metrics_but_not_training(tiny_config) -> None:
    every = run_experiment(tiny_config(modes=["federated"], federation={"rounds": 3}), log=lambda *_: None)
    sparse = run_experiment(tiny_config(modes=["federated"], federation={"rounds": 3, "eval_every": 2}),
                            log=lambda *_: None)
    records = sparse["federated"].records
    assert ["test_accuracy" in r for r in records] == [True, False, True, True]
    assert records[1]["bytes_up"] > 0 and records[1]["train_loss"] > 0
    a = load_file(every["federated"].path / "state.safetensors")
    b = load_file(sparse["federated"].path / "state.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # evaluating changes nothing the clients train
    kept = [r for r in numbers(every["federated"].records) if r["round"] != 1]
    assert kept == [r for r in numbers(records) if r["round"] != 1]


def test_stalled_by_hand() -> None:
    val = lambda *v: [{"round": i, "val_accuracy": a} for i, a in enumerate(v)]  # noqa: E731
    assert not stalled(val(0.5, 0.6, 0.7), 2)
    assert not stalled(val(0.5, 0.7, 0.6), 2)  # one evaluation since the best
    assert stalled(val(0.5, 0.7, 0.6, 0.7), 2)  # a tie is no improvement: the earliest best counts
    assert not stalled(val(0.5, 0.7, 0.6, 0.7), 0)  # patience 0: never
    assert not stalled([{"round": 1}, {"round": 2}], 1)  # no validation metric


def test_centralized_stops_early_and_a_resume_stays_stopped(tiny_config) -> None:
    cfg = tiny_config(modes=["centralized"], data={"validation_fraction": 0.25},
                      federation={"rounds": 12, "centralized_patience": 1}, train={"lr": 0.5})
    out = run_experiment(cfg, log=lambda *_: None)["centralized"]
    records = out.records
    assert records[-1].get("early_stop") is True and len(records) - 1 < 12
    assert stalled(records, 1) and not stalled(records[:-1], 1)
    again = resume_experiment(out.path.parent, log=lambda *_: None)["centralized"].records
    assert numbers(again) == numbers(records)


def test_patience_needs_a_validation_split(tiny_config) -> None:
    with pytest.raises(ConfigError, match="federation.centralized_patience = 2: expected 0 without"):
        tiny_config(federation={"centralized_patience": 2})


def test_local_sample() -> None:
    assert local_sample(5, 0, 0) == [0, 1, 2, 3, 4] == local_sample(5, 9, 0)
    some = local_sample(100, 10, 0)
    assert len(set(some)) == 10 and some == sorted(some) and some == local_sample(100, 10, 0)
    assert some != local_sample(100, 10, 1)
