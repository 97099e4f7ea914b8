"""The contract EVERY registered method passes, whatever it exchanges (weights, logits, scores):

- its state survives the wire: get_state -> serialize -> deserialize -> set_state on a second
  instance gives back the same state;
- a client's local work never changes a frozen tensor of the model it was handed;
- the strategy it runs with turns identical client states into a valid state for it (FedAvg and
  the logit consensus: into that very state; the score search: a proposal with the same keys,
  the same every time);
- 2 clients x 2 rounds run end to end, and every round's upload is the measured payload size
  (a score search's payload follows its round's candidates: at most 1 KB per client here).

Gradient methods pass more on top (test_method_contract_encoder.py and _lm.py: identical outputs
after a round trip, every exchanged tensor moves in training, a PEFT export that loads outside
fedcustom). A method added to the registry without a case here fails
`test_every_registered_method_has_a_case`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedcustom.core.config import ModelConfig, TrainConfig, build
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import METHODS, STRATEGIES
from fedcustom.core.types import FitContext, Update
from fedcustom.data.batching import encode
from fedcustom.runs.experiment import run_experiment

TEXTS = ["a warm and funny film", "dull", "the plot was tedious and the acting flat", "superb"] * 4
LABELS = [1, 0, 0, 1] * 4
PUBLIC = [f"{w} film {i}" for i, w in enumerate(["great", "dull", "lovely", "awful"] * 6)]


@dataclass(frozen=True)
class Case:
    model: str  # "encoder": tiny BERT; "causal": tiny Llama with a WordPiece tokenizer
    strategy: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


CASES = {
    "prefix": Case("encoder", {"name": "fedavg"}, {"num_virtual_tokens": 4}),
    "lora": Case("encoder", {"name": "fedavg"}),
    # client 0 (the one whose upload the suite checks) trains rank 2 of the global rank 4
    "hetlora": Case("encoder", {"name": "fedavg"}, {"rank": 4, "client_ranks": [2, 4]}),
    "prompt": Case("encoder", {"name": "fedavg"}, {"num_virtual_tokens": 4}),
    "full": Case("encoder", {"name": "fedavg"}),
    "distill": Case("encoder", {"name": "consensus"}, {"public_size": 24, "server_epochs": 1}),
    "prompt-search": Case("causal", {"name": "score-search", "candidates": 4}, {"score_examples": 8}),
    "bbpt": Case("causal", {"name": "fedavg"},
                 {"score_examples": 8, "intrinsic_dim": 8, "popsize": 3, "generations": 1}),
    "vprompt": Case("causal", {"name": "fedavg"}, {"num_virtual_tokens": 3}),
}


def test_every_registered_method_has_a_case() -> None:
    assert sorted(CASES) == METHODS.names()


@pytest.fixture
def public_txt(tmp_path: Path) -> Path:
    path = tmp_path / "public.txt"
    path.write_text("\n".join(PUBLIC) + "\n")
    return path


@pytest.fixture
def model_dirs(tiny_model_dir: Path, wordpiece_llama_dir: Path) -> dict[str, Path]:
    return {"encoder": tiny_model_dir, "causal": wordpiece_llama_dir}


def options(name: str, public: Path) -> dict[str, Any]:
    extra = {"public": str(public)} if name == "distill" else {}
    return {**CASES[name].options, **extra}


def prepared(name: str, model_dir: Path, public: Path, seed: int) -> tuple[Any, torch.nn.Module, Any]:
    cls = METHODS.get(name)
    method = cls(build(cls.Options, options(name, public)))
    model, tokenizer = method.build_model(ModelConfig(name=str(model_dir), max_length=16), 2, seed)
    method.prepare(model)
    method.adopt(model, method.get_state(model))  # the server's start of a run
    return method, model, tokenizer


def trained_state(method: Any, model: torch.nn.Module, tokenizer: Any) -> dict[str, torch.Tensor]:
    """A client's upload after one round of local work (a state other than the initial one)."""
    data = encode(TEXTS, LABELS, tokenizer, 16)
    method.fit(model, data, np.arange(len(data)), TrainConfig(batch_size=8, lr=0.05, eval_batch_size=8),
               FitContext(cid=0, server_round=1, seed=3))
    return method.get_state(model)


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_round_trips_through_the_wire(model_dirs, public_txt: Path, name: str) -> None:
    method, model, tokenizer = prepared(name, model_dirs[CASES[name].model], public_txt, seed=1)
    state = trained_state(method, model, tokenizer)
    other, other_model, _ = prepared(name, model_dirs[CASES[name].model], public_txt, seed=2)
    other.set_state(other_model, deserialize(serialize(state)))
    back = other.get_state(other_model)
    assert back.keys() == state.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in state.items())


@pytest.mark.parametrize("name", sorted(CASES))
def test_local_work_never_changes_a_frozen_tensor(model_dirs, public_txt: Path, name: str) -> None:
    method, model, tokenizer = prepared(name, model_dirs[CASES[name].model], public_txt, seed=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen  # every method freezes something of the model it is handed
    before = method.get_state(model)
    after = trained_state(method, model, tokenizer)
    params = dict(model.named_parameters())
    assert [n for n, p in frozen.items() if not torch.equal(params[n], p)] == []
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the local work did something


@pytest.mark.parametrize("name", sorted(CASES))
def test_its_strategy_turns_identical_states_into_a_valid_one(model_dirs, public_txt: Path,
                                                              name: str) -> None:
    method, model, tokenizer = prepared(name, model_dirs[CASES[name].model], public_txt, seed=0)
    state = trained_state(method, model, tokenizer)
    spec = CASES[name].strategy
    make = lambda: STRATEGIES.get(spec["name"])(  # noqa: E731
        build(STRATEGIES.get(spec["name"]).Options, {k: v for k, v in spec.items() if k != "name"}))
    same = [Update(state, 3), Update({k: v.clone() for k, v in state.items()}, 7)]
    out = make().aggregate(state, same)
    assert out.keys() == state.keys()
    assert all(out[k].dtype == v.dtype for k, v in state.items())
    kind = METHODS.get(name).exchange
    if kind == "scores":  # the search proposes new candidates (as many as it keeps): deterministically
        again = make().aggregate(state, same)
        assert all(torch.equal(out[k], again[k]) for k in out)
    elif kind == "logits":  # the consensus of identical predictions predicts the same
        assert torch.allclose(torch.softmax(out["logits"], -1), torch.softmax(state["logits"], -1), atol=1e-6)
    else:
        assert all(torch.allclose(out[k], v, atol=1e-6) for k, v in state.items())
    method.set_state(model, out)  # and the method takes it


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_clients_two_rounds(tiny_config, model_dirs, public_txt: Path, name: str) -> None:
    case = CASES[name]
    method = {"name": name, **options(name, public_txt)}
    cfg = tiny_config(model={"name": str(model_dirs[case.model])}, method=method, strategy=case.strategy,
                      modes=["federated"])
    path = run_experiment(cfg, log=lambda *_: None)["federated"].path
    records = [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    payload = len(serialize(load_file(path / "state.safetensors")))  # measured, not computed
    for r in records[1:]:
        assert r["clients"] == r["accepted"] == 2
        assert 0 <= r["test_accuracy"] <= 1
        if METHODS.get(name).exchange == "scores":  # scores for as many candidates as the round has
            assert 0 < r["bytes_up"] <= 2 * 1024
        else:
            assert r["bytes_up"] == payload * 2
