"""Heterogeneous LoRA ranks (method hetlora, FedAvg's ownership masks): rank-aware aggregation on
hand-computed numbers, truncation on the tiny model (a client holds and trains only its own
components), a mixed-rank run, uniform ranks = LoRA + FedAvg bit for bit, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import updates
from safetensors.torch import load_file

from fedcustom.core.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, build
from fedcustom.core.errors import UserError
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import METHODS
from fedcustom.core.types import FitContext, is_owned_key, owned_key
from fedcustom.data.batching import encode, eval_batches
from fedcustom.federation.screening import delta_norm, screen_updates
from fedcustom.methods.hetlora import HetLora, rank_axes
from fedcustom.runs.experiment import run_experiment
from fedcustom.strategies.base import owned_mean, weighted_mean
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions

TEXTS = ["a warm and funny film", "dull", "the plot was tedious and the acting flat", "superb"] * 4
LABELS = [1, 0, 0, 1] * 4
TRUE, FALSE = True, False


# --- aggregation on hand-built tensors ------------------------------------------------------------

def lora_like(rows: list[float], rank: int) -> dict[str, torch.Tensor]:
    """A state shaped like one LoRA layer of global rank 4 plus a head: A [4, 2] (rank axis 0),
    B [2, 4] (rank axis 1), each component i filled with rows[i], and their masks (first `rank`)."""
    a = torch.tensor([[v, v] for v in rows])
    owned = torch.arange(4) < rank
    return {"A": a, "B": a.T.clone(), "head": torch.tensor([rows[0] - 4, rows[0]]),
            owned_key("A"): owned.reshape(4, 1), owned_key("B"): owned.reshape(1, 4)}


def test_each_component_is_averaged_over_the_clients_that_own_it() -> None:
    global_state = lora_like([-1.0, -1.0, -1.0, -1.0], rank=4)
    # ranks 1, 3, 2 with 1, 2, 1 examples; beyond its rank a client sends zeros
    sent = [(lora_like([4.0, 0.0, 0.0, 0.0], rank=1), 1),
            (lora_like([8.0, 6.0, 7.0, 0.0], rank=3), 2),
            (lora_like([0.0, 3.0, 0.0, 0.0], rank=2), 1)]
    new = FedAvg(FedAvgOptions()).aggregate(global_state, updates(sent))
    # component 0, all own it:          (1*4 + 2*8 + 1*0) / 4 = 5
    # component 1, ranks 3 and 2:       (2*6 + 1*3) / 3 = 5
    # component 2, rank 3 only:         7
    # component 3, nobody:              the global value, -1
    # (zero-padded FedAvg would give 5, 3.75, 3.5, 0: the small clients' zeros drag it down)
    expected = torch.tensor([5.0, 5.0, 7.0, -1.0])
    assert torch.allclose(new["A"], expected[:, None].expand(4, 2), atol=1e-6)
    assert torch.allclose(new["B"], expected[None, :].expand(2, 4), atol=1e-6)
    # the head has no mask, every client owns it: (1*[0, 4] + 2*[4, 8] + 1*[-4, 0]) / 4 = [1, 5]
    assert torch.allclose(new["head"], torch.tensor([1.0, 5.0]), atol=1e-6)
    # the global model owns all of itself
    assert torch.equal(new[owned_key("A")], global_state[owned_key("A")])
    assert torch.equal(new[owned_key("B")], global_state[owned_key("B")])


def test_server_lr_steps_toward_the_owned_mean() -> None:
    global_state = lora_like([1.0, 1.0, 1.0, 1.0], rank=4)
    sent = [(lora_like([3.0, 0.0, 0.0, 0.0], rank=1), 1), (lora_like([5.0, 5.0, 0.0, 0.0], rank=2), 1)]
    new = FedAvg(FedAvgOptions(server_lr=0.5)).aggregate(global_state, updates(sent))
    # owned means 4, 5, (none), (none) -> 1 + 0.5 * (mean - 1) = 2.5, 3, 1, 1
    assert torch.allclose(new["A"][:, 0], torch.tensor([2.5, 3.0, 1.0, 1.0]))


def random_state(g: torch.Generator, masks: bool) -> dict[str, torch.Tensor]:
    state = {"A": torch.randn(4, 6, generator=g), "B": torch.randn(5, 4, generator=g),
             "head": torch.randn(3, generator=g)}
    if masks:
        state |= {owned_key("A"): torch.ones(4, 1, dtype=torch.bool),
                  owned_key("B"): torch.ones(1, 4, dtype=torch.bool)}
    return state


@pytest.mark.parametrize("options", [FedAvgOptions(), FedAvgOptions(server_lr=0.7, momentum=0.9)])
def test_uniform_ranks_are_fedavg_bit_for_bit(options: FedAvgOptions) -> None:
    """Masks that are all True change nothing, to the last bit, over several rounds."""
    g = torch.Generator().manual_seed(0)
    masked, plain = FedAvg(options), FedAvg(options)
    state_m = random_state(g, masks=True)
    state_p = {k: v for k, v in state_m.items() if not is_owned_key(k)}
    for _ in range(3):
        sent = [(random_state(g, masks=True), n) for n in (1, 5, 2)]
        mean = owned_mean(state_m, updates(sent))
        reference = weighted_mean(updates([({k: v for k, v in s.items() if not is_owned_key(k)}, n)
                                           for s, n in sent]))
        assert all(torch.equal(mean[k], reference[k]) for k in reference)
        state_m = masked.aggregate(state_m, updates(sent))
        state_p = plain.aggregate(state_p, updates([({k: v for k, v in s.items() if not is_owned_key(k)}, n)
                                                    for s, n in sent]))
        assert all(torch.equal(state_m[k], state_p[k]) for k in state_p)


def test_screening_measures_only_what_a_sender_owns() -> None:
    global_state = lora_like([1.0, 1.0, 1.0, 1.0], rank=4)
    small = lora_like([4.0, 0.0, 0.0, 0.0], rank=1) | {"head": global_state["head"]}
    # component 0 moved by 3 in 2 elements of A and 2 of B: sqrt(4 * 9); the zeros beyond rank 1
    # are not moves of its own, and the masks are bookkeeping
    assert delta_norm(global_state, small) == 6.0


def test_a_small_rank_client_is_not_cut_for_its_zeros() -> None:
    """Clients that barely moved, one of rank 1: its zeros beyond rank 1 would make it a
    far outlier without the masks (3.5 against a median of 0.42), with them it is the closest."""
    global_state = lora_like([1.0, 1.0, 1.0, 1.0], rank=4)
    sent = [lora_like([1.1, 0.0, 0.0, 0.0], rank=1)] + [lora_like([1.1] * 4, rank=4) for _ in range(3)]
    accepted, rejected = screen_updates(global_state, dict(enumerate(updates([(s, 1) for s in sent]))),
                                        max_norm_factor=5.0)
    assert rejected == [] and len(accepted) == 4
    unmasked = [{k: v for k, v in s.items() if not is_owned_key(k)} for s in [global_state, *sent]]
    _, rejected = screen_updates(unmasked[0], dict(enumerate(updates([(s, 1) for s in unmasked[1:]]))),
                                 max_norm_factor=5.0)
    assert [r["client"] for r in rejected] == [0]


# --- the method on the tiny model -------------------------------------------------------------------

def prepared(model_dir: Path, seed: int = 0, **options: object) -> tuple[HetLora, torch.nn.Module, object]:
    method = HetLora(build(HetLora.Options, {"rank": 4, "client_ranks": [2, 4], **options}))
    model, tokenizer = method.build_model(ModelConfig(name=str(model_dir), max_length=16), 2, seed)
    method.prepare(model)
    return method, model, tokenizer


def trained_global(method: HetLora, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A global state in which every component is in use (B no longer zero)."""
    with torch.no_grad():
        for name in rank_axes(model):
            dict(model.named_parameters())[name].add_(0.1)
    return method.get_state(model)


def lora_tensors(state: dict[str, torch.Tensor],
                 model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, int]]:
    return {name: (state[name], axis) for name, axis in rank_axes(model).items()}


def beyond(t: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    return t.narrow(axis, rank, t.shape[axis] - rank)


def within(t: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    return t.narrow(axis, 0, rank)


@pytest.mark.parametrize(("cid", "rank"), [(0, 2), (1, 4), (2, 2)])
def test_a_client_holds_and_trains_only_its_own_components(tiny_model_dir: Path, cid: int, rank: int) -> None:
    method, model, tokenizer = prepared(tiny_model_dir)
    global_state = trained_global(method, model)
    assert all(bool(m.all()) for k, m in global_state.items() if is_owned_key(k))  # the server holds rank 4
    method.set_state(model, global_state)
    data = encode(TEXTS, LABELS, tokenizer, 16)
    method.fit(model, data, np.arange(len(data)), TrainConfig(batch_size=8, lr=0.01),
               FitContext(cid=cid, server_round=1, seed=3))
    sent = method.get_state(model)
    assert sent.keys() == global_state.keys()
    for name, (t, axis) in lora_tensors(sent, model).items():
        assert not beyond(t, axis, rank).any(), name  # zeros beyond its rank, after training
        assert not torch.equal(within(t, axis, rank), within(global_state[name], axis, rank))  # trained
        assert int(sent[owned_key(name)].sum()) == rank
    assert not torch.equal(sent["head.weight"], global_state["head.weight"])

    # what it sends is a state of its rank on any model that loads it
    _, other, _ = prepared(tiny_model_dir, seed=1)
    method.set_state(other, deserialize(serialize(sent)))
    back = method.get_state(other)
    assert all(torch.equal(back[k], v) for k, v in sent.items())


def test_truncated_components_get_no_gradient(tiny_model_dir: Path) -> None:
    method, model, tokenizer = prepared(tiny_model_dir)
    method.set_state(model, trained_global(method, model))
    method.truncate(model, 2)
    model.train()
    b = next(eval_batches(encode(TEXTS, LABELS, tokenizer, 16), np.arange(8), 8))
    method.loss(model, b).backward()
    params = dict(model.named_parameters())
    for name, axis in rank_axes(model).items():
        grad = params[name].grad
        assert grad is not None and not beyond(grad, axis, 2).any(), name
        assert within(grad, axis, 2).abs().sum() > 0, name


def test_a_client_keeps_the_smaller_of_its_rank_and_what_it_received(tiny_model_dir: Path) -> None:
    method, model, tokenizer = prepared(tiny_model_dir)
    method.set_state(model, trained_global(method, model))
    method.truncate(model, 2)
    received = method.get_state(model)  # e.g. its own rank-2 state, back in local mode
    method.set_state(model, received)
    data = encode(TEXTS, LABELS, tokenizer, 16)
    method.fit(model, data, np.arange(len(data)), TrainConfig(batch_size=8, lr=0.01),
               FitContext(cid=1, server_round=1, seed=3))  # client 1 has rank 4
    sent = method.get_state(model)
    assert all(int(m.sum()) == 2 for k, m in sent.items() if is_owned_key(k))


@pytest.mark.parametrize(("change", "message"), [
    (lambda s, k: s.pop(k), "missing"),
    (lambda s, k: s.__setitem__(k, torch.tensor([[True], [False], [True], [False]])), "first components"),
    (lambda s, k: s.__setitem__(k, s[k].float()), "bool mask"),
])
def test_malformed_masks_are_refused(tiny_model_dir: Path, change, message: str) -> None:
    method, model, _ = prepared(tiny_model_dir)
    state = method.get_state(model)
    change(state, next(k for k in state if is_owned_key(k) and "lora_A" in k))
    with pytest.raises(UserError, match=message):
        method.set_state(model, state)


def test_masks_that_disagree_on_the_rank_are_refused(tiny_model_dir: Path) -> None:
    method, model, _ = prepared(tiny_model_dir)
    state = method.get_state(model)
    key = next(k for k in state if is_owned_key(k) and "lora_A" in k)
    state[key] = torch.tensor([[True], [True], [False], [False]])
    with pytest.raises(UserError, match=r"disagree on the rank: \[2, 4\]"):
        method.set_state(model, state)


def test_one_round_by_hand_on_the_tiny_model(tiny_model_dir: Path) -> None:
    """Three clients (ranks 2, 4, 2): components 0-1 are the mean of all three, 2-3 client 1's."""
    method, model, tokenizer = prepared(tiny_model_dir)
    global_state = trained_global(method, model)
    data = encode(TEXTS, LABELS, tokenizer, 16)
    sent = []
    for cid, n in [(0, 1), (1, 2), (2, 1)]:
        method.set_state(model, global_state)
        method.fit(model, data, np.arange(4 * n), TrainConfig(batch_size=4, lr=0.01),
                   FitContext(cid=cid, server_round=1, seed=cid))
        sent.append((method.get_state(model), n))
    new = FedAvg(FedAvgOptions()).aggregate(global_state, updates(sent))
    for name, (t, axis) in lora_tensors(new, model).items():
        states = [(lora_tensors(s, model)[name][0], n) for s, n in sent]
        everyone = sum(within(s, axis, 2) * n for s, n in states) / 4
        assert torch.allclose(within(t, axis, 2), everyone, atol=1e-6)
        assert torch.allclose(beyond(t, axis, 2), beyond(states[1][0], axis, 2), atol=1e-6)
    head = sum(s["head.weight"] * n for s, n in sent) / 4
    assert torch.allclose(new["head.weight"], head, atol=1e-6)
    method.set_state(model, new)  # the server takes it, at rank 4
    assert all(bool(m.all()) for k, m in method.get_state(model).items() if is_owned_key(k))


# --- runs -------------------------------------------------------------------------------------------

def final_state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "state.safetensors")


def test_mixed_ranks_three_clients_two_rounds(tiny_config) -> None:
    cfg = tiny_config(method={"name": "hetlora", "rank": 4, "client_ranks": [2, 4]},
                      partition={"num_clients": 3}, train={"lr": 1e-3})
    results = run_experiment(cfg, log=lambda *_: None)
    fed, cen = results["federated"].path, results["centralized"].path
    records = [json.loads(line) for line in (fed / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    payload = len(serialize(final_state(fed)))  # every client sends the rank-4 payload
    for r in records[1:]:
        assert r["clients"] == r["accepted"] == 3 and r["rejected"] == []
        assert r["bytes_up"] == payload * 3 and np.isfinite(r["train_loss"])
    fed_state, cen_state = final_state(fed), final_state(cen)
    assert all(bool(v.all()) for k, v in fed_state.items() if is_owned_key(k))
    axes = {k: (0 if ".lora_A." in k else 1) for k in fed_state if ".lora_" in k and not is_owned_key(k)}
    assert axes
    for name, axis in axes.items():
        # the centralized baseline is client 0 (rank 2): components 2-3 kept their initial values
        # (B: zero); federated, client 1 (rank 4) trained them, and nobody's zeros diluted them
        initial = beyond(cen_state[name], axis, 2)
        moved = beyond(fed_state[name], axis, 2)
        assert not torch.equal(moved, initial)
        if ".lora_B." in name:
            assert not initial.any()
        else:
            assert (moved - initial).norm() < 0.2 * initial.norm()


def test_uniform_ranks_are_lora_with_fedavg(tiny_config) -> None:
    common = {"partition": {"num_clients": 3}, "modes": ["federated"]}
    lora = run_experiment(tiny_config(name="lora", method={"name": "lora", "rank": 4}, **common),
                          log=lambda *_: None)["federated"].path
    het = run_experiment(tiny_config(name="het", method={"name": "hetlora", "rank": 4, "client_ranks": [4]},
                                     **common), log=lambda *_: None)["federated"].path
    a, b = final_state(lora), final_state(het)
    assert set(b) == set(a) | {owned_key(k) for k in a if ".lora_" in k}
    assert all(torch.equal(a[k], b[k]) for k in a)
    varies = ("peak_rss_mb", "bytes_up", "bytes_down")  # the masks add bytes; timings vary

    def records(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k and k not in varies}
                for line in (path / "rounds.jsonl").read_text().splitlines()]

    assert records(lora) == records(het)


# --- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "message"), [
    ({"client_ranks": [0, 4]}, "method.client_ranks = (0, 4): expected a list of integers in [1, rank]"),
    ({"client_ranks": [4, 16]}, "method.client_ranks = (4, 16): expected a list of integers in [1, rank] "
                                "(rank = 8 is the global rank"),
    ({"rank": 2, "client_ranks": [4]}, "method.client_ranks = (4,): expected"),
    ({"client_ranks": ["4"]}, "method.client_ranks = '4': expected int"),
    ({"client_ranks": [2.5]}, "method.client_ranks = 2.5: expected int"),
    ({"client_ranks": 4}, "method.client_ranks = 4: expected a list"),
])
def test_bad_ranks_are_one_line_config_errors_naming_the_key(method: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(ExperimentConfig, {"method": {"name": "hetlora", **method}})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_hetlora_needs_a_strategy_that_reads_ownership_masks() -> None:
    with pytest.raises(ConfigError, match="a strategy that accepts 'masked-weights' payloads"):
        build(ExperimentConfig, {"method": {"name": "hetlora"}, "strategy": {"name": "fedadam"}})
    for name in ("fedavg", "fedprox", "fedavgm"):  # FedAvg's aggregation reads the masks
        build(ExperimentConfig, {"method": {"name": "hetlora", "rank": 16, "client_ranks": [4, 8, 16]},
                                 "strategy": {"name": name}})
    assert METHODS.get("hetlora").exchange == "masked-weights"


def test_the_study_file_builds() -> None:
    from fedcustom.runs.study import load_study

    study = load_study(Path(__file__).parent.parent / "experiments" / "hetlora.toml")
    ranks = {r.config.method.options.client_ranks for r in study.runs.values()}
    assert ranks == {(8,), (4, 8, 16), (4,)}
    options = [r.config.method.options for r in study.runs.values()]
    assert {o.alpha / o.rank for o in options} == {2.0}  # the same LoRA scale in every cell
