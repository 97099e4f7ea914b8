"""Server strategies beyond FedAvg on hand-computed numbers, plus one tiny run each."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcustom.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, build, component
from fedcustom.data.batching import encode
from fedcustom.errors import UserError
from fedcustom.experiment import run_experiment
from fedcustom.methods import METHODS
from fedcustom.methods.prefix import PrefixOptions
from fedcustom.models import build_classifier
from fedcustom.payload import deserialize, serialize
from fedcustom.strategies import STRATEGIES, Strategy
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions
from fedcustom.strategies.fedopt import FedOptOptions
from fedcustom.strategies.fedprox import FedProx, FedProxOptions
from fedcustom.strategies.robust import KrumOptions, TrimmedMeanOptions
from fedcustom.training import train_local

NEW = ["fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean", "krum", "fedprox"]
# server_lr 1, beta1 = beta2 = 0.5, tau 0.5: v starts at tau^2 = 0.25, sqrt(v) + tau is easy
EASY = FedOptOptions(server_lr=1.0, beta1=0.5, beta2=0.5, tau=0.5)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def make(name: str, **options: object) -> Strategy:
    cls = STRATEGIES.get(name)
    return cls(build(cls.Options, options))


def w(state: dict[str, torch.Tensor]) -> list[float]:
    return state["w"].tolist()


# --- FedAdam / FedYogi / FedAdagrad -------------------------------------------------------------

def test_fedadam_two_rounds() -> None:
    adam = STRATEGIES.get("fedadam")(EASY)
    # weighted mean = ([2, -1]*1 + [0, 1]*3) / 4 = [0.5, 0.5]; delta = [0.5, 0.5] - [0, 1] = [0.5, -0.5]
    # m = 0.5*0 + 0.5*delta = [0.25, -0.25]; v = 0.5*0.25 + 0.5*0.25 = [0.25, 0.25]
    # step = m / (sqrt(0.25) + 0.5) = [0.25, -0.25] -> [0.25, 0.75]
    s1 = adam.aggregate({"w": t(0, 1)}, [({"w": t(2, -1)}, 1), ({"w": t(0, 1)}, 3)])
    assert w(s1) == pytest.approx([0.25, 0.75])
    # delta = [0.75, 0.75] - [0.25, 0.75] = [0.5, 0]
    # m = 0.5*[0.25, -0.25] + 0.5*[0.5, 0] = [0.375, -0.125]; v = 0.125 + 0.5*[0.25, 0] = [0.25, 0.125]
    # step = [0.375 / (0.5 + 0.5), -0.125 / (sqrt(0.125) + 0.5)] = [0.375, -0.1464466]
    s2 = adam.aggregate(s1, [({"w": t(0.75, 0.75)}, 7)])
    assert w(s2) == pytest.approx([0.625, 0.6035534])


def test_fedyogi_two_rounds() -> None:
    yogi = STRATEGIES.get("fedyogi")(EASY)
    # delta = [2, 0.25]; m = [1, 0.125]; v = v - 0.5 * delta^2 * sign(v - delta^2):
    #   0.25 - 0.5*4*sign(0.25 - 4) = 2.25;  0.25 - 0.5*0.0625*sign(0.25 - 0.0625) = 0.21875
    # step = [1 / (1.5 + 0.5), 0.125 / (sqrt(0.21875) + 0.5)] = [0.5, 0.1291713]
    s1 = yogi.aggregate({"w": t(0, 0)}, [({"w": t(2, 0.25)}, 1)])
    assert w(s1) == pytest.approx([0.5, 0.1291713])
    # clients send the global state back: delta = 0, m = [0.5, 0.0625]; Yogi leaves v as it was
    # (Adam would halve it): step = [0.5 / 2, 0.0625 / (sqrt(0.21875) + 0.5)] = [0.25, 0.0645856]
    s2 = yogi.aggregate(s1, [(dict(s1), 1)])
    assert w(s2) == pytest.approx([0.75, 0.1937570])


def test_fedadagrad_two_rounds() -> None:
    adagrad = STRATEGIES.get("fedadagrad")(EASY)
    # delta = 1.2; m = 0.6; v = 0.25 + 1.44 = 1.69; step = 0.6 / (1.3 + 0.5) = 1/3
    s1 = adagrad.aggregate({"w": t(0)}, [({"w": t(1.2)}, 1)])
    assert w(s1) == pytest.approx([1 / 3])
    # delta = 0; m = 0.3; v = 1.69 + 0 (Adagrad never forgets); step = 0.3 / 1.8 = 1/6
    s2 = adagrad.aggregate(s1, [(dict(s1), 1)])
    assert w(s2) == pytest.approx([0.5])


def test_fedadam_state_dict_resumes_the_same() -> None:
    first = {"w": t(0, 1)}, [({"w": t(2, -1)}, 1), ({"w": t(0, 1)}, 3)]
    adam = STRATEGIES.get("fedadam")(EASY)
    s1 = adam.aggregate(*first)
    restored = STRATEGIES.get("fedadam")(EASY)
    restored.load_state_dict(deserialize(serialize(adam.state_dict())))  # as a checkpoint would
    second = [({"w": t(0.75, 0.75)}, 7)]
    assert torch.equal(adam.aggregate(s1, second)["w"], restored.aggregate(s1, second)["w"])
    fresh = STRATEGIES.get("fedadam")(EASY)  # without the moments the step differs
    assert not torch.equal(fresh.aggregate(s1, second)["w"], restored.aggregate(s1, second)["w"])


# --- median / trimmed mean / Krum ---------------------------------------------------------------

# 5 clients; the last is an outlier that also claims far more examples (which must not matter)
FIVE = [({"w": t(1, -1)}, 1), ({"w": t(2, 0)}, 1), ({"w": t(3, 5)}, 1), ({"w": t(7, 2)}, 1),
        ({"w": t(100, 1)}, 1000)]
ZERO = {"w": t(0, 0)}


def test_median() -> None:
    # sorted: [1, 2, 3, 7, 100] -> 3; [-1, 0, 1, 2, 5] -> 1
    assert w(make("median").aggregate(ZERO, FIVE)) == [3, 1]


def test_trimmed_mean() -> None:
    # int(0.2 * 5) = 1 cut from each end: (2 + 3 + 7) / 3 = 4; (0 + 1 + 2) / 3 = 1
    assert w(make("trimmed_mean", trim_fraction=0.2).aggregate(ZERO, FIVE)) == pytest.approx([4, 1])
    # the default 0.1 rounds down to nothing cut with 5 clients: the unweighted mean
    # (1 + 2 + 3 + 7 + 100) / 5 = 22.6; (-1 + 0 + 5 + 2 + 1) / 5 = 1.4
    assert w(make("trimmed_mean").aggregate(ZERO, FIVE)) == pytest.approx([22.6, 1.4])


# honest clients around [1, 1] and one attacker; squared distances among the honest ones:
#   h0=[1,1]: h1 .25, h2 .25, h3 1   -> two nearest (n - f - 2 = 2) sum to 0.5
#   h1=[1.5,1]: h0 .25, h2 .5, h3 2.25 -> 0.75
#   h2=[1,.5]: h0 .25, h1 .5, h3 1.25  -> 0.75
#   h3=[0,1]: h0 1, h2 1.25, h1 2.25   -> 2.25;  the attacker's score is ~2e4
KRUM = [({"w": t(100, -100)}, 1000), ({"w": t(1, 1)}, 1), ({"w": t(1.5, 1)}, 100),
        ({"w": t(1, 0.5)}, 1), ({"w": t(0, 1)}, 1)]


def test_krum_picks_the_honest_center() -> None:
    assert w(make("krum", num_malicious=1).aggregate(ZERO, KRUM)) == [1, 1]


def test_multi_krum_averages_the_m_best_unweighted() -> None:
    # best three: h0, h1, h2 -> ([1, 1] + [1.5, 1] + [1, 0.5]) / 3 = [7/6, 5/6], h1's 100 examples ignored
    new = make("krum", num_malicious=1, multi_krum=3).aggregate(ZERO, KRUM)
    assert w(new) == pytest.approx([7 / 6, 5 / 6])


def test_krum_with_too_few_clients_is_a_user_error() -> None:
    with pytest.raises(UserError, match="more than 4 clients per round, got 4"):
        make("krum", num_malicious=1).aggregate(ZERO, KRUM[:4])
    with pytest.raises(UserError, match="multi_krum = 5"):
        make("krum", num_malicious=1, multi_krum=5).aggregate(ZERO, KRUM)


def test_robust_options_are_checked() -> None:
    assert TrimmedMeanOptions().trim_fraction == 0.1 and KrumOptions().multi_krum == 1
    expected = r"strategy\.trim_fraction = 0\.6: expected a number in \[0, 0\.5\)"
    with pytest.raises(ConfigError, match=expected):
        build(ExperimentConfig, {"strategy": {"name": "trimmed_mean", "trim_fraction": 0.6}})
    with pytest.raises(ConfigError, match=r"strategy\.num_malicious = -1"):
        build(ExperimentConfig, {"strategy": {"name": "krum", "num_malicious": -1}})
    with pytest.raises(ConfigError, match=r"strategy\.tau = 0\.0"):
        build(ExperimentConfig, {"strategy": {"name": "fedyogi", "tau": 0}})


# --- identity ------------------------------------------------------------------------------------

ROBUST = [("median", {}), ("trimmed_mean", {"trim_fraction": 0.2}), ("krum", {"num_malicious": 1}),
          ("krum", {"num_malicious": 1, "multi_krum": 3})]


@pytest.mark.parametrize(("name", "options"), ROBUST, ids=lambda x: str(x))
def test_identical_states_aggregate_to_themselves(name: str, options: dict) -> None:
    state, other = {"w": torch.randn(3, 4)}, {"w": torch.randn(3, 4)}
    new = make(name, **options).aggregate(other, [(dict(state), n) for n in (1, 2, 3, 4, 9)])
    assert torch.equal(new["w"], state["w"])


@pytest.mark.parametrize("name", NEW)
def test_global_state_sent_back_stays_the_global_state(name: str) -> None:
    state = {"w": torch.randn(3, 4)}
    options = {"num_malicious": 1} if name == "krum" else {}
    new = make(name, **options).aggregate(state, [(dict(state), n) for n in (1, 2, 3, 4, 9)])
    assert torch.equal(new["w"], state["w"])


# --- FedProx -------------------------------------------------------------------------------------

def test_fedprox_sends_mu_and_aggregates_like_fedavg() -> None:
    prox = FedProx(FedProxOptions(mu=0.5, server_lr=0.5))
    assert prox.client_config(3) == {"prox_mu": 0.5}
    assert make("fedprox").client_config(1) == {"prox_mu": 0.01}
    assert FedAvg(FedAvgOptions()).client_config(1) == {}
    results = [({"w": t(1, 2)}, 1), ({"w": t(3, 6)}, 3)]
    # FedAvg with server lr 0.5: 0 + 0.5 * ([2.5, 5] - 0)
    assert w(prox.aggregate(ZERO, results)) == pytest.approx([1.25, 2.5])


def test_proximal_term_keeps_clients_near_the_global_state(tiny_model_dir: Path) -> None:
    texts = ["a warm and funny film", "dull", "the plot was tedious and the acting flat", "superb"]

    def drift(prox_mu: float) -> float:
        model, tokenizer = build_classifier(ModelConfig(name=str(tiny_model_dir), max_length=16), 2, 0)
        method = METHODS.get("prefix")(PrefixOptions(num_virtual_tokens=4, projection=False))
        method.prepare(model)
        before = method.get_state(model)
        data = encode(texts * 4, [1, 0, 0, 1] * 4, tokenizer, 16)
        cfg = TrainConfig(batch_size=4, lr=0.05, local_epochs=3)
        result = train_local(model, method, data, np.arange(16), cfg, seed=0, prox_mu=prox_mu)
        assert result.steps == 12 and result.loss > 0
        after = method.get_state(model)
        return sum(((after[k] - before[k]) ** 2).sum().item() for k in before)

    plain, prox = drift(0.0), drift(100.0)
    assert 0 < prox < plain / 2


# --- a 2-round run per strategy ------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW)
def test_two_round_run(tiny_config, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import fedcustom.training as training

    seen: list[float] = []

    def spy(*args: object, **kwargs: object):
        seen.append(kwargs.get("prox_mu", 0.0))  # type: ignore[arg-type]
        return train_local(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "train_local", spy)
    strategy: dict[str, object] = {"name": name}
    partition = {"num_clients": 2}
    if name == "krum":
        strategy, partition = {"name": name, "num_malicious": 1}, {"num_clients": 5}
    cfg = tiny_config(partition=partition, modes=["federated"])
    # set the table afterwards: tiny_config merges into existing sections and has no [strategy]
    cfg = dataclasses.replace(cfg, strategy=component("strategy", strategy))
    result = run_experiment(cfg, log=lambda *_: None)["federated"]
    lines = (result.path / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1, 2]
    assert [r["round"] for r in result.records] == [0, 1, 2]
    assert seen == [0.01 if name == "fedprox" else 0.0] * 2 * partition["num_clients"]
