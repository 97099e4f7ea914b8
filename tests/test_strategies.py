"""Server strategies beyond FedAvg on hand-computed numbers, plus one tiny run each."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import updates

from fedcustom.core.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, build, component
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import METHODS, STRATEGIES
from fedcustom.core.types import Instructions
from fedcustom.data.batching import encode
from fedcustom.methods.prefix import PrefixOptions
from fedcustom.methods.training import train_local
from fedcustom.models.backbones import build_classifier
from fedcustom.runs.experiment import run_experiment
from fedcustom.strategies.base import Strategy
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions
from fedcustom.strategies.fedopt import FedOptOptions
from fedcustom.strategies.fedprox import FedProx, FedProxOptions
from fedcustom.strategies.robust import KrumOptions, TrimmedMeanOptions

NEW = ["fedadam", "fedyogi", "fedadagrad", "fedavgm", "median", "trimmed_mean", "krum", "fedprox",
       "dp_fedavg"]
# server_lr 1, beta1 = beta2 = 0.5, eps 0.5: numbers that are easy to follow by hand
EASY = FedOptOptions(server_lr=1.0, beta1=0.5, beta2=0.5, eps=0.5)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def make(name: str, **options: object) -> Strategy:
    cls = STRATEGIES.get(name)
    return cls(build(cls.Options, options))


def w(state: dict[str, torch.Tensor]) -> list[float]:
    return state["w"].tolist()


# --- FedAdam / FedYogi / FedAdagrad / FedAvgM ----------------------------------------------------

def client_rounds(seed: int, rounds: int) -> list[list[tuple[dict[str, torch.Tensor], int]]]:
    """Per round, 3 clients' states (two tensors) with unequal example counts, drawn around zero."""
    g = torch.Generator().manual_seed(seed)
    return [[({"a": torch.randn(3, 2, generator=g), "b": torch.randn(4, generator=g)}, n) for n in (1, 5, 2)]
            for _ in range(rounds)]


@pytest.mark.parametrize(("name", "torch_optimizer"), [
    ("fedadam", lambda p, o: torch.optim.Adam(p, lr=o.server_lr, betas=(o.beta1, o.beta2), eps=o.eps)),
    ("fedadagrad", lambda p, o: torch.optim.Adagrad(p, lr=o.server_lr, eps=o.eps)),
])
def test_server_optimizer_is_the_torch_optimizer_on_the_averaged_delta(name: str, torch_optimizer) -> None:
    options = FedOptOptions(server_lr=0.1, beta1=0.8, beta2=0.9, eps=1e-3)
    strategy = STRATEGIES.get(name)(options)
    state = {"a": torch.ones(3, 2), "b": torch.zeros(4)}
    params = {k: v.clone() for k, v in state.items()}  # the reference: torch stepping by itself
    reference = torch_optimizer(list(params.values()), options)
    for results in client_rounds(0, 5):
        total = sum(n for _, n in results)
        for k, p in params.items():  # grad = -(example-weighted mean of the client states - global)
            mean = sum(s[k].double() * (n / total) for s, n in results).float()  # type: ignore[union-attr]
            p.grad = p.detach() - mean
        reference.step()
        state = strategy.aggregate(state, updates(results))
        for k, p in params.items():
            assert torch.equal(state[k], p), (k, state[k], p)
    assert not torch.allclose(state["a"], torch.ones(3, 2))  # it moved


def test_fedadam_first_step_has_bias_correction() -> None:
    # with bias correction Adam's first step is server_lr * g / (|g| + eps) per coordinate:
    # delta = [0.5, -0.5] -> step = 1 * [0.5, -0.5] / (0.5 + 0.5) = [0.5, -0.5]
    adam = STRATEGIES.get("fedadam")(EASY)
    s1 = adam.aggregate({"w": t(0, 1)}, updates([({"w": t(2, -1)}, 1), ({"w": t(0, 1)}, 3)]))
    assert w(s1) == pytest.approx([0.5, 0.5])


def test_fedyogi_two_rounds() -> None:
    yogi = STRATEGIES.get("fedyogi")(EASY)
    # round 1, g = -delta = [-2, -0.5]: m = 0.5*g = [-1, -0.25]; v = 0 + 0.5*g^2 = [2, 0.125] (as Adam)
    # m_hat = m / 0.5 = [-2, -0.5]; v_hat = v / 0.5 = [4, 0.25]; step = -m_hat / (sqrt(v_hat) + 0.5)
    #   = [2 / 2.5, 0.5 / 1] = [0.8, 0.5]
    s1 = yogi.aggregate({"w": t(0, 0)}, updates([({"w": t(2, 0.5)}, 1)]))
    assert w(s1) == pytest.approx([0.8, 0.5])
    # round 2, g = [-1, 0.5] (clients send [1.8, 0]): m = 0.5*m + 0.5*g = [-1, 0.125]
    # v: Yogi moves by 0.5*g^2 towards g^2: 2 - 0.5*1*sign(2 - 1) = 1.5; 0.125 + 0.5*0.25 = 0.25
    #   (Adam would give 0.5*2 + 0.5*1 = 1.5 and 0.0625 + 0.125 = 0.1875)
    # bias corrections 1 - 0.25 = 0.75: m_hat = [-4/3, 1/6]; v_hat = [2, 1/3]
    # step = [4/3 / (sqrt(2) + 0.5), -1/6 / (sqrt(1/3) + 0.5)] = [0.6965, -0.15470]
    s2 = yogi.aggregate(s1, updates([({"w": t(1.8, 0)}, 1)]))
    assert w(s2) == pytest.approx([0.8 + 0.6965356, 0.5 - 0.1547005], rel=1e-5)


def test_fedadagrad_two_rounds() -> None:
    adagrad = STRATEGIES.get("fedadagrad")(EASY)
    # g = -1.2; sum = 1.44; step = 1.2 / (1.2 + 0.5) = 12/17
    s1 = adagrad.aggregate({"w": t(0)}, updates([({"w": t(1.2)}, 1)]))
    assert w(s1) == pytest.approx([12 / 17])
    # g = 0 (the global state sent back): Adagrad has no momentum, so nothing moves
    s2 = adagrad.aggregate(s1, updates([(dict(s1), 1)]))
    assert w(s2) == pytest.approx([12 / 17])


def test_fedavgm_is_fedavg_with_momentum() -> None:
    assert STRATEGIES.get("fedavgm").Options().momentum == 0.9
    m, fedavg = make("fedavgm", momentum=0.5), FedAvg(FedAvgOptions(momentum=0.5))
    state_m = state_f = {"w": t(0, 1)}
    for results in ([({"w": t(2, -1)}, 1), ({"w": t(0, 1)}, 3)], [({"w": t(1, 1)}, 2)]):
        state_m, state_f = m.aggregate(state_m, updates(results)), fedavg.aggregate(state_f, updates(results))
        assert torch.equal(state_m["w"], state_f["w"])


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizer_state_dict_resumes_the_same(name: str) -> None:
    rounds = client_rounds(1, 3)
    start = {"a": torch.ones(3, 2), "b": torch.zeros(4)}
    strategy = STRATEGIES.get(name)(EASY)
    s1 = strategy.aggregate(strategy.aggregate(start, updates(rounds[0])), updates(rounds[1]))
    restored = STRATEGIES.get(name)(EASY)
    restored.load_state_dict(deserialize(serialize(strategy.state_dict())))  # as a checkpoint would
    assert restored.state_dict().keys() == strategy.state_dict().keys()
    expected = strategy.aggregate(s1, updates(rounds[2]))
    got = restored.aggregate(s1, updates(rounds[2]))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    fresh = STRATEGIES.get(name)(EASY)  # without the optimizer state the step differs
    assert not torch.equal(fresh.aggregate(s1, updates(rounds[2]))["a"], got["a"])


# --- median / trimmed mean / Krum ---------------------------------------------------------------

# 5 clients; the last is an outlier that also claims far more examples (which must not matter)
FIVE = [({"w": t(1, -1)}, 1), ({"w": t(2, 0)}, 1), ({"w": t(3, 5)}, 1), ({"w": t(7, 2)}, 1),
        ({"w": t(100, 1)}, 1000)]
ZERO = {"w": t(0, 0)}


def test_median() -> None:
    # sorted: [1, 2, 3, 7, 100] -> 3; [-1, 0, 1, 2, 5] -> 1
    assert w(make("median").aggregate(ZERO, updates(FIVE))) == [3, 1]


def test_trimmed_mean() -> None:
    # int(0.2 * 5) = 1 cut from each end: (2 + 3 + 7) / 3 = 4; (0 + 1 + 2) / 3 = 1
    assert w(make("trimmed_mean", trim_fraction=0.2).aggregate(ZERO, updates(FIVE))) == pytest.approx([4, 1])
    # the default 0.1 rounds down to nothing cut with 5 clients: the unweighted mean
    # (1 + 2 + 3 + 7 + 100) / 5 = 22.6; (-1 + 0 + 5 + 2 + 1) / 5 = 1.4
    assert w(make("trimmed_mean").aggregate(ZERO, updates(FIVE))) == pytest.approx([22.6, 1.4])


# honest clients around [1, 1] and one attacker; squared distances among the honest ones:
#   h0=[1,1]: h1 .25, h2 .25, h3 1   -> two nearest (n - f - 2 = 2) sum to 0.5
#   h1=[1.5,1]: h0 .25, h2 .5, h3 2.25 -> 0.75
#   h2=[1,.5]: h0 .25, h1 .5, h3 1.25  -> 0.75
#   h3=[0,1]: h0 1, h2 1.25, h1 2.25   -> 2.25;  the attacker's score is ~2e4
KRUM = [({"w": t(100, -100)}, 1000), ({"w": t(1, 1)}, 1), ({"w": t(1.5, 1)}, 100),
        ({"w": t(1, 0.5)}, 1), ({"w": t(0, 1)}, 1)]


def test_krum_picks_the_honest_center() -> None:
    assert w(make("krum", num_malicious=1).aggregate(ZERO, updates(KRUM))) == [1, 1]


def test_multi_krum_averages_the_m_best_unweighted() -> None:
    # best three: h0, h1, h2 -> ([1, 1] + [1.5, 1] + [1, 0.5]) / 3 = [7/6, 5/6], h1's 100 examples ignored
    new = make("krum", num_malicious=1, multi_krum=3).aggregate(ZERO, updates(KRUM))
    assert w(new) == pytest.approx([7 / 6, 5 / 6])


def test_krum_with_too_few_clients_per_round_is_a_config_error() -> None:
    raw = {"strategy": {"name": "krum", "num_malicious": 1}, "partition": {"num_clients": 8},
           "federation": {"fraction_fit": 0.5}}
    with pytest.raises(ConfigError, match="more than 4 clients per round, got 4"):
        build(ExperimentConfig, raw)
    with pytest.raises(ConfigError, match="multi_krum = 5"):
        build(ExperimentConfig, {**raw, "strategy": {"name": "krum", "num_malicious": 1, "multi_krum": 5},
                                 "federation": {"fraction_fit": 0.625}})
    build(ExperimentConfig, {**raw, "federation": {"fraction_fit": 0.625}})  # 5 clients a round


def test_krum_keeps_the_global_state_when_a_round_has_too_few_updates() -> None:
    """Drop-outs or rejected updates leave fewer than Krum needs to outvote f attackers: the round
    keeps the global state and its record says why, instead of stopping the run."""
    krum = make("krum", num_malicious=1)
    assert w(krum.aggregate(ZERO, updates(KRUM[:4]))) == w(ZERO)
    assert krum.round_record() == {"krum_kept": "4 update(s) this round: krum with strategy.num_malicious"
                                                " = 1 needs more than 4 clients per round, got 4; the "
                                                "global state is kept"}
    assert krum.round_record() == {}  # once
    assert w(krum.aggregate(ZERO, updates(KRUM))) == [1, 1] and krum.round_record() == {}


def test_robust_options_are_checked() -> None:
    assert TrimmedMeanOptions().trim_fraction == 0.1 and KrumOptions().multi_krum == 1
    expected = r"strategy\.trim_fraction = 0\.6: expected a number in \[0, 0\.5\)"
    with pytest.raises(ConfigError, match=expected):
        build(ExperimentConfig, {"strategy": {"name": "trimmed_mean", "trim_fraction": 0.6}})
    with pytest.raises(ConfigError, match=r"strategy\.num_malicious = -1"):
        build(ExperimentConfig, {"strategy": {"name": "krum", "num_malicious": -1}})
    with pytest.raises(ConfigError, match=r"strategy\.eps = 0\.0"):
        build(ExperimentConfig, {"strategy": {"name": "fedyogi", "eps": 0}})


# --- identity ------------------------------------------------------------------------------------

ROBUST = [("median", {}), ("trimmed_mean", {"trim_fraction": 0.2}), ("krum", {"num_malicious": 1}),
          ("krum", {"num_malicious": 1, "multi_krum": 3})]


@pytest.mark.parametrize(("name", "options"), ROBUST, ids=lambda x: str(x))
def test_identical_states_aggregate_to_themselves(name: str, options: dict) -> None:
    state, other = {"w": torch.randn(3, 4)}, {"w": torch.randn(3, 4)}
    new = make(name, **options).aggregate(other, updates([(dict(state), n) for n in (1, 2, 3, 4, 9)]))
    assert torch.equal(new["w"], state["w"])


@pytest.mark.parametrize("name", NEW)
def test_global_state_sent_back_stays_the_global_state(name: str) -> None:
    state = {"w": torch.randn(3, 4)}
    options = {"krum": {"num_malicious": 1}, "dp_fedavg": {"noise_multiplier": 0.0}}.get(name, {})
    new = make(name, **options).aggregate(state, updates([(dict(state), n) for n in (1, 2, 3, 4, 9)]))
    assert torch.equal(new["w"], state["w"])


# --- FedProx -------------------------------------------------------------------------------------

def test_fedprox_sends_mu_and_aggregates_like_fedavg() -> None:
    prox = FedProx(FedProxOptions(mu=0.5, server_lr=0.5))
    base = Instructions(lr_scale=0.5)
    assert prox.instruct(base) == Instructions(lr_scale=0.5, prox_mu=0.5)
    assert make("fedprox").instruct(base).prox_mu == 0.01
    assert FedAvg(FedAvgOptions()).instruct(base) == base
    results = [({"w": t(1, 2)}, 1), ({"w": t(3, 6)}, 3)]
    # FedAvg with server lr 0.5: 0 + 0.5 * ([2.5, 5] - 0)
    assert w(prox.aggregate(ZERO, updates(results))) == pytest.approx([1.25, 2.5])


def test_proximal_term_keeps_clients_near_the_global_state(tiny_model_dir: Path) -> None:
    texts = ["a warm and funny film", "dull", "the plot was tedious and the acting flat", "superb"]

    def drift(prox_mu: float) -> float:
        model, tokenizer = build_classifier(ModelConfig(name=str(tiny_model_dir), max_length=16), 2, 0)
        method = METHODS.get("prefix")(PrefixOptions(num_virtual_tokens=4, projection=False))
        method.prepare(model)
        before = method.get_state(model)
        data = encode(texts * 4, [1, 0, 0, 1] * 4, tokenizer, 16)
        cfg = TrainConfig(batch_size=4, lr=0.05, local_epochs=3)
        result = train_local(model, method, data, np.arange(16), cfg, seed=0,
                             instructions=Instructions(prox_mu=prox_mu))
        assert result.steps == 12 and result.loss > 0
        after = method.get_state(model)
        return sum(((after[k] - before[k]) ** 2).sum().item() for k in before)

    plain, prox = drift(0.0), drift(100.0)
    assert 0 < prox < plain / 2


# --- a 2-round run per strategy ------------------------------------------------------------------

@pytest.mark.parametrize("name", NEW)
def test_two_round_run(tiny_config, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import fedcustom.methods.base as base

    seen: list[float] = []

    def spy(*args: object, **kwargs: object):
        seen.append(kwargs["instructions"].prox_mu)  # type: ignore[attr-defined]
        return train_local(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(base, "train_local", spy)
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
