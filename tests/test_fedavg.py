"""FedAvg on hand-computed numbers."""

from __future__ import annotations

import pytest
import torch
from helpers import updates

from fedcustom.core.registry import STRATEGIES
from fedcustom.strategies.base import weighted_mean
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_weighted_mean_by_examples() -> None:
    # (1*[1, 2] + 3*[3, 6]) / 4 = [2.5, 5.0]; (1*[4] + 3*[0]) / 4 = [1.0]
    mean = weighted_mean(updates([({"w": t(1, 2), "b": t(4)}, 1), ({"w": t(3, 6), "b": t(0)}, 3)]))
    assert torch.equal(mean["w"], t(2.5, 5.0))
    assert torch.equal(mean["b"], t(1.0))


def test_fedavg_is_the_weighted_mean() -> None:
    fedavg = STRATEGIES.get("fedavg")(FedAvgOptions())
    new = fedavg.aggregate({"w": t(0, 0)}, updates([({"w": t(1, 2)}, 1), ({"w": t(3, 6)}, 3)]))
    assert torch.allclose(new["w"], t(2.5, 5.0))


def test_identical_states_aggregate_to_themselves() -> None:
    state = {"w": torch.randn(3, 4)}
    for options in (FedAvgOptions(), FedAvgOptions(server_lr=0.7, momentum=0.9)):
        new = FedAvg(options).aggregate(state, updates([(state, 5), (dict(state), 2)]))
        assert torch.equal(new["w"], state["w"])


def test_server_lr_and_momentum() -> None:
    fedavg = FedAvg(FedAvgOptions(server_lr=0.5, momentum=0.5))
    # round 1: delta = 2.5 - 0 = 2.5; velocity = 2.5; new = 0 + 0.5 * 2.5 = 1.25
    s1 = fedavg.aggregate({"w": t(0.0)}, updates([({"w": t(2.5)}, 1)]))
    assert s1["w"].item() == pytest.approx(1.25)
    # round 2: delta = 3.25 - 1.25 = 2; velocity = 0.5 * 2.5 + 2 = 3.25; new = 1.25 + 1.625
    s2 = fedavg.aggregate(s1, updates([({"w": t(3.25)}, 4)]))
    assert s2["w"].item() == pytest.approx(2.875)
    restored = FedAvg(FedAvgOptions(server_lr=0.5, momentum=0.5))
    restored.load_state_dict(fedavg.state_dict())
    assert restored.velocity["w"].item() == pytest.approx(3.25)


def test_no_results_is_an_error() -> None:
    with pytest.raises(ValueError, match="zero client results"):
        weighted_mean(updates([]))

