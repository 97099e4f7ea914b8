"""Client-level DP (dp_fedavg): clipping on hand-computed numbers, the noise's statistics and
seeding, epsilon from opacus's accountant, resume, and a tiny run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import updates

from fedcustom.core.config import ConfigError, ExperimentConfig, build, component
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import Instructions
from fedcustom.runs.experiment import resume_experiment, run_experiment
from fedcustom.runs.results import read_records
from fedcustom.strategies.privacy import DPFedAvg, clip, privatize

QUIET = {"log": lambda *_: None}


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def dp(**options: Any) -> DPFedAvg:
    return DPFedAvg(build(DPFedAvg.Options, options))


def accountant_epsilon(steps: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


# --- clipping, no noise ----------------------------------------------------------------------

def test_clip_scales_the_whole_delta_to_the_norm() -> None:
    # ||[3, 4], [12]|| = 13 -> times 2/13
    clipped, was = clip({"a": t(3, 4).double(), "b": t(12).double()}, 2.0)
    assert was and clipped["a"].tolist() == pytest.approx([6 / 13, 8 / 13])
    assert clipped["b"].tolist() == pytest.approx([24 / 13])
    small = {"a": t(0.3, 0.4).double()}
    assert clip(small, 2.0) == (small, False)


@pytest.mark.parametrize("local", [False, True])
def test_noise_free_dp_fedavg_is_the_uniform_mean_of_clipped_deltas(local: bool) -> None:
    strategy = dp(clip_norm=1.0, noise_multiplier=0.0, server_lr=0.5, local=local)
    # deltas [3, 4] (norm 5 -> [0.6, 0.8]) and [0.5, 0] (kept); the 100 examples must not count:
    # uniform mean [0.55, 0.4]; server lr 0.5 -> [1 + 0.275, 0.2]
    new = strategy.aggregate({"w": t(1, 0)}, updates([({"w": t(4, 4)}, 1), ({"w": t(1.5, 0)}, 100)]))
    assert new["w"].tolist() == pytest.approx([1.275, 0.2])
    record = strategy.round_record()
    assert "dp_epsilon" not in record  # no noise, no guarantee
    assert record == ({"dp_noise_std": 0.0} if local else {"dp_clipped": 1, "dp_noise_std": 0.0})
    assert strategy.round_record() == {}  # a round without aggregation adds nothing


# --- noise -----------------------------------------------------------------------------------

ZEROS = {"a": torch.zeros(300, 200), "b": torch.zeros(40_000)}  # 100k entries for the statistics


@pytest.mark.parametrize(("local", "std"), [(False, 2.0 * 0.5 / 4), (True, 2.0 * 0.5 / 2)])
def test_noise_on_the_mean_has_the_promised_std(local: bool, std: float) -> None:
    # clients send the global state back: the new state is pure noise; central std z*C/n,
    # local: n independent draws of std z*C averaged, z*C/sqrt(n)
    strategy = dp(clip_norm=0.5, noise_multiplier=2.0, local=local)
    new = strategy.aggregate(ZEROS, updates([(dict(ZEROS), 1)] * 4))
    noise = torch.cat([v.flatten() for v in new.values()]).double()
    assert float(noise.std()) == pytest.approx(std, rel=0.01)
    assert abs(float(noise.mean())) < 4 * std / noise.numel() ** 0.5
    assert strategy.round_record()["dp_noise_std"] == pytest.approx(std)


def test_noise_is_seeded_and_fresh_every_round() -> None:
    results = [({"w": t(1, 2, 3)}, 1)] * 3
    start = {"w": t(0, 0, 0)}
    a, b, other = dp(seed=3), dp(seed=3), dp(seed=4)
    first = a.aggregate(start, updates(results))
    assert torch.equal(first["w"], b.aggregate(start, updates(results))["w"])
    assert not torch.equal(first["w"], other.aggregate(start, updates(results))["w"])
    assert not torch.equal(first["w"], a.aggregate(start, updates(results))["w"])  # round 2 draws anew


@pytest.mark.parametrize("local", [False, True])
def test_noise_does_not_depend_on_the_order_of_keys(local: bool) -> None:
    # a checkpoint gives the keys back sorted: a resumed run must draw the same noise per tensor
    start = {"b": torch.zeros(3), "a": torch.zeros(2)}
    results = [({"b": t(1, 2, 3), "a": t(4, 5)}, 1)] * 2
    forward = dp(local=local).aggregate(start, updates(results))
    backward = dp(local=local).aggregate(dict(reversed(start.items())),
                                         updates([({k: s[k] for k in ("a", "b")}, n) for s, n in results]))
    assert all(torch.equal(forward[k], backward[k]) for k in start)


def test_local_mode_averages_what_each_client_would_send() -> None:
    global_state = {"w": t(0, 0, 0, 0)}
    results = [({"w": t(3, 0, 4, 0)}, 1), ({"w": t(0.1, 0.2, 0, 0)}, 7)]
    strategy = dp(clip_norm=1.0, noise_multiplier=0.7, seed=5, local=True)
    new = strategy.aggregate(global_state, updates(results))
    # client i of the first release (0) draws from stream i + 1
    sent = [privatize(global_state, s, 1.0, 0.7, 5, 0, i + 1) for i, (s, _) in enumerate(results)]
    assert new["w"].tolist() == pytest.approx(((sent[0]["w"] + sent[1]["w"]) / 2).tolist(), abs=1e-6)


# --- accounting ------------------------------------------------------------------------------

def test_epsilon_is_opacus_rdp_accountant_per_round() -> None:
    strategy = dp(noise_multiplier=1.1, sample_rate=0.3, delta=1e-5)
    state, results = {"w": t(0)}, [({"w": t(1)}, 1)]
    epsilons = []
    for steps in (1, 2, 3):
        state = strategy.aggregate(state, updates(results))
        record = strategy.round_record()
        assert record["dp_delta"] == 1e-5
        assert record["dp_epsilon"] == pytest.approx(accountant_epsilon(steps, 1.1, 0.3, 1e-5), rel=1e-12)
        epsilons.append(record["dp_epsilon"])
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2]  # privacy spent grows with rounds


def test_more_noise_spends_less_and_local_pays_for_the_whole_federation() -> None:
    def first_round(**options: Any) -> float:
        strategy = dp(**options)
        strategy.aggregate({"w": t(0)}, updates([({"w": t(1)}, 1)]))
        return strategy.round_record()["dp_epsilon"]

    low, high = first_round(noise_multiplier=0.8), first_round(noise_multiplier=3.0)
    assert high < low
    # local DP is accounted without sampling amplification: as central at sample_rate 1
    local = first_round(noise_multiplier=1.0, sample_rate=0.1, local=True)
    assert local == pytest.approx(accountant_epsilon(1, 1.0, 1.0, 1e-5))
    assert first_round(noise_multiplier=1.0, sample_rate=0.1) < local


def test_state_dict_resumes_noise_momentum_and_accounting() -> None:
    options = {"noise_multiplier": 0.9, "momentum": 0.5, "seed": 1, "sample_rate": 0.5}
    results = [({"w": t(2, -1)}, 1), ({"w": t(0, 1)}, 3)]
    strategy = dp(**options)
    s2 = strategy.aggregate(strategy.aggregate({"w": t(0, 0)}, updates(results)), updates(results))
    strategy.round_record()
    restored = dp(**options)
    restored.load_state_dict(deserialize(serialize(strategy.state_dict())))  # as a checkpoint would
    expected = strategy.aggregate(s2, updates(results))["w"]
    assert torch.equal(expected, restored.aggregate(s2, updates(results))["w"])
    assert strategy.round_record() == restored.round_record()
    assert restored.releases == 3


def test_options_are_checked() -> None:
    for key, value, expected in [("clip_norm", 0, "a number > 0"), ("delta", 1.0, "a number in"),
                                 ("noise_multiplier", -1, "a number >= 0"), ("sample_rate", 0, "a number in"),
                                 ("seed", -2, "an integer >= 0"), ("local", 1, "expected bool")]:
        with pytest.raises(ConfigError, match=rf"strategy\.{key} = .*{expected}"):
            build(ExperimentConfig, {"strategy": {"name": "dp_fedavg", key: value}})
    assert "dp_fedavg" in STRATEGIES.names()


# --- a 2-client x 2-round run ----------------------------------------------------------------

def dp_config(tiny_config, name: str, **strategy: Any) -> ExperimentConfig:
    cfg = tiny_config(name=name, modes=["federated"], federation={"rounds": 2, "max_norm_factor": 0.0})
    spec = {"name": "dp_fedavg", "clip_norm": 0.5, "noise_multiplier": 0.3, **strategy}
    return dataclasses.replace(cfg, strategy=component("strategy", spec))


def untimed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("client_seconds", "round_seconds", "peak_rss_mb")}
            for r in records]


@pytest.mark.parametrize("local", [False, True])
def test_two_round_run_records_epsilon_and_repeats_exactly(tiny_config, local: bool) -> None:
    cfg = dp_config(tiny_config, "dp", local=local)
    first = run_experiment(cfg, **QUIET)["federated"]
    records = first.records
    assert [r["round"] for r in records] == [0, 1, 2]
    assert "dp_epsilon" not in records[0]
    expected = [accountant_epsilon(n, 0.3, 1.0, 1e-5) for n in (1, 2)]
    assert [r["dp_epsilon"] for r in records[1:]] == pytest.approx(expected)
    again = run_experiment(dataclasses.replace(cfg, name="again"), **QUIET)["federated"]
    assert untimed(again.records) == untimed(records)  # same config and seed: same noise, same numbers


def test_interrupted_dp_run_resumes_to_the_same_records(tiny_config) -> None:
    cfg = dp_config(tiny_config, "stopped", momentum=0.5)
    reference = run_experiment(dataclasses.replace(cfg, name="reference"), **QUIET)["federated"]

    class Stop(KeyboardInterrupt):
        pass

    def interrupt(mode: str, record: dict[str, Any]) -> None:
        if record["round"] == 1:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(cfg, on_record=interrupt, **QUIET)
    [run_dir] = Path(cfg.output_dir).glob("stopped-*")
    resume_experiment(run_dir, **QUIET)
    resumed, ref = (untimed(read_records(path)) for path in (run_dir / "federated", reference.path))
    assert resumed == ref and ref[2]["dp_epsilon"] > ref[1]["dp_epsilon"]


# --- distributed DP under secure aggregation ----------------------------------------------------

def distributed_config(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "engine": "flower", "partition": {"num_clients": 4},
        "strategy": {"name": "dp_fedavg", "distributed": True, "clip_norm": 1.0, "noise_multiplier": 1.0},
        "flower": {"secure_aggregation": True}, "federation": {"max_norm_factor": 0.0}}
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def test_distributed_dp_is_checked_against_the_rest_of_the_config() -> None:
    pytest.importorskip("flwr")
    build(ExperimentConfig, distributed_config())  # 4 clients a round, noise std 0.5 each: fits +-4
    for changes, expected in [
        ({"flower": {"secure_aggregation": False}}, r"strategy\.distributed = true: expected "
                                                    r"flower\.secure_aggregation = true"),
        ({"strategy": {"noise_multiplier": 2.0}}, r"flower\.secagg_clip = 4: expected at least "
                                                  r"strategy\.clip_norm \+ 5 x the clients' noise std = 6"),
        ({"strategy": {"local": True}}, r"strategy\.distributed = True: expected false with local = true"),
    ]:
        with pytest.raises(ConfigError, match=expected) as e:
            build(ExperimentConfig, distributed_config(**changes))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"strategy\.reproducible_noise = True: expected false without"):
        build(ExperimentConfig, {"strategy": {"name": "dp_fedavg", "reproducible_noise": True}})
    # central DP still needs each update: not under secure aggregation
    central = distributed_config()
    central["strategy"] = {"name": "dp_fedavg"}
    with pytest.raises(ConfigError, match="a strategy that needs only the clients' mean"):
        build(ExperimentConfig, central)


def test_distributed_dp_tells_each_client_its_clip_and_noise() -> None:
    strategy = dp(distributed=True, clip_norm=2.0, noise_multiplier=1.5)
    told = strategy.instruct(Instructions(lr_scale=0.5, clients=9))
    assert (told.lr_scale, told.dp_clip_norm, told.dp_noise_std, told.dp_seed) == (0.5, 2.0, 1.0, -1)
    seeded = dp(distributed=True, reproducible_noise=True, seed=7).instruct(Instructions(clients=4))
    assert (seeded.dp_noise_std, seeded.dp_seed) == (0.5, 7)
    assert dp().instruct(Instructions(clients=9)) == Instructions(clients=9)  # central: nothing to do


@pytest.mark.parametrize("clients", [3, 10])
def test_the_mean_of_the_clients_noise_has_the_configured_std(clients: int) -> None:
    """Each client adds z * C / sqrt(n); the uniform mean of n such deltas (what SecAgg+ hands the
    server) carries z * C / n, the central mechanism's noise. 40,000 coordinates, a fixed seed."""
    z, c = 1.3, 0.8
    told = dp(distributed=True, clip_norm=c, noise_multiplier=z).instruct(Instructions(clients=clients))
    start = {"a": torch.zeros(200, 100), "b": torch.zeros(20000)}
    tiny = {k: v + 1e-6 for k, v in start.items()}  # a tiny update: the noise dominates
    sent = [privatize(start, tiny, told.dp_clip_norm, told.dp_noise_std, 11, 1, cid + 1)
            for cid in range(clients)]
    own = torch.cat([(s[k] - start[k]).flatten() for s in sent for k in start])
    mean = torch.cat([sum(s[k] - start[k] for s in sent).flatten() / clients for k in start])
    assert float(own.std()) == pytest.approx(z * c / clients ** 0.5, rel=0.02)
    assert float(mean.std()) == pytest.approx(z * c / clients, rel=0.02)
    assert abs(float(mean.mean())) < 0.02 * z * c / clients


def test_fresh_noise_differs_and_seeded_noise_repeats() -> None:
    from fedcustom.strategies.privacy import gaussian

    like = {"w": torch.zeros(64)}
    assert not torch.equal(gaussian(like, 1.0, None)["w"], gaussian(like, 1.0, None)["w"])
    assert torch.equal(gaussian(like, 1.0, 3, 1, 2)["w"], gaussian(like, 1.0, 3, 1, 2)["w"])


def test_distributed_accounting_follows_the_clients_in_each_sum() -> None:
    """All asked clients in the sum: epsilon is the central mechanism's. Two of four: the sum
    carries z * sqrt(2/4), more is spent. The server step is FedAvg's on the mean as it came."""
    from fedcustom.strategies.privacy import spent

    strategy = dp(distributed=True, noise_multiplier=1.2, sample_rate=0.5, server_lr=1.0)
    state = {"w": t(0, 0)}
    for server_round, k in ((1, 4), (2, 2)):
        strategy.instruct(Instructions(clients=4))
        state = strategy.aggregate(state, updates([({"w": t(server_round, 1)}, k)]))
        record = strategy.round_record()
        assert record["dp_clients"] == k
    assert state["w"].tolist() == [2, 1]  # the last mean taken as is (server_lr 1)
    assert strategy.multipliers == pytest.approx([1.2, 1.2 * 0.5 ** 0.5])
    assert record["dp_epsilon"] == pytest.approx(spent([1.2, 1.2 * 0.5 ** 0.5], 0.5, 1e-5))
    assert record["dp_epsilon"] > accountant_epsilon(2, 1.2, 0.5, 1e-5)
    assert accountant_epsilon(1, 1.2, 0.5, 1e-5) == pytest.approx(spent([1.2], 0.5, 1e-5))
    restored = dp(distributed=True, noise_multiplier=1.2, sample_rate=0.5)
    restored.load_state_dict(deserialize(serialize(strategy.state_dict())))
    assert restored.multipliers == strategy.multipliers and restored.releases == 2
