"""Seeded robustness knobs: client dropout, stragglers that miss the deadline, noisy labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcustom.core.config import ConfigError, FaultsConfig, build
from fedcustom.data.batching import Encoded
from fedcustom.federation.faults import Faults
from fedcustom.runs.experiment import run_experiment


def test_split_partitions_the_sampled_clients_and_is_seeded() -> None:
    faults = Faults(FaultsConfig(dropout=0.3, stragglers=0.2), 10, 2, seed=5)
    sampled = list(range(10))
    dropped_total = late_total = 0
    for server_round in range(1, 401):
        on_time, dropped, late = faults.split(server_round, sampled)
        assert sorted(on_time + dropped + late) == sampled
        assert faults.split(server_round, sampled) == (on_time, dropped, late)
        dropped_total += len(dropped)
        late_total += len(late)
    assert dropped_total / 4000 == pytest.approx(0.3, abs=0.03)
    assert late_total / 4000 == pytest.approx(0.7 * 0.2, abs=0.03)  # a dropped client is not late
    assert Faults(FaultsConfig(), 10, 2, seed=5).split(1, sampled) == (sampled, [], [])


def test_noisy_clients_get_noisy_labels_and_the_others_do_not() -> None:
    labels = torch.arange(4000) % 4
    data = Encoded(torch.zeros(4000, 3, dtype=torch.long), torch.full((4000,), 3), labels)
    faults = Faults(FaultsConfig(noisy_clients=0.3, noise_rate=0.5), 10, 4, seed=1)
    assert len(faults.noisy) == 3 and faults.describe() == {"noisy_clients": faults.noisy}
    honest = next(c for c in range(10) if c not in faults.noisy)
    assert faults.training_data(honest, data) is data
    noisy = faults.training_data(faults.noisy[0], data)
    assert noisy is faults.training_data(faults.noisy[1], data)  # one copy per run
    changed = (noisy.labels != labels).float().mean().item()
    assert changed == pytest.approx(0.5 * 3 / 4, abs=0.03)  # a random label may be the true one
    assert torch.equal(data.labels, labels)  # the shared data is untouched
    assert noisy.input_ids is data.input_ids


@pytest.mark.parametrize("key", ["dropout", "stragglers"])
def test_rates_of_one_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"faults.{key} = 1.0"):
        build(FaultsConfig, {key: 1.0}, "faults.")


def test_run_records_dropped_and_late_clients(tiny_config) -> None:
    cfg = tiny_config(partition={"num_clients": 6}, faults={"dropout": 0.4, "stragglers": 0.3},
                      modes=["federated"], federation={"rounds": 4})
    records = run_experiment(cfg, log=lambda *_: None)["federated"].records
    faults = Faults(cfg.faults, 6, 2, cfg.seed)
    sizes = {}
    for r in records[1:]:
        on_time, dropped, late = faults.split(r["round"], list(range(6)))
        assert (r["dropped"], r["late"]) == (dropped, late)
        assert r["accepted"] + len(r["rejected"]) == len(on_time)
        sizes[r["round"]] = (r["bytes_up"], len(on_time), r["bytes_down"], len(on_time + late))
    per_client = {b // n for b, n, _, _ in sizes.values() if n}
    assert len(per_client) == 1  # only updates that arrived in time are counted as sent
    # the global state goes to every client asked to train (late ones too), none to those dropped
    assert {down // n for _, _, down, n in sizes.values() if n} == per_client
    assert any(r["dropped"] for r in records[1:]) and any(r["late"] for r in records[1:])


def test_a_round_where_everyone_drops_out_keeps_the_state(tiny_config) -> None:
    cfg = tiny_config(faults={"dropout": 0.9}, modes=["federated"], federation={"rounds": 3})
    faults = Faults(cfg.faults, 2, 2, cfg.seed)
    empty = [r for r in range(1, 4) if not faults.split(r, [0, 1])[0]]
    assert empty, "pick a seed/rate with a round where nobody reports"
    records = run_experiment(cfg, log=lambda *_: None)["federated"].records
    for r in empty:
        assert records[r]["accepted"] == 0 and records[r]["train_loss"] is None
        assert records[r]["test_accuracy"] == records[r - 1]["test_accuracy"]
    assert np.isfinite([r["test_loss"] for r in records]).all()


def test_too_few_clients_is_a_one_line_stop(tiny_config, tmp_path, capsys) -> None:
    from fedcustom.cli import main
    from fedcustom.core.config import dumps

    path = tmp_path / "c.toml"
    path.write_text(dumps(tiny_config(modes=["federated"], faults={"dropout": 0.9},
                                      federation={"rounds": 2, "min_clients": 2})))
    capsys.readouterr()
    assert main(["-q", "run", str(path)]) == 2  # -q: no progress bars, only the error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than federation.min_clients = 2" in err[0] and "--resume" in err[0]
