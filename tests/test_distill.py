"""Federated distillation: consensus arithmetic on hand-computed numbers, the method's protocol on
tiny models of two kinds, a 2-client x 2-round run, and payloads that ignore model size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import updates
from safetensors.torch import load_file

from fedcustom.core.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig, build
from fedcustom.core.errors import UserError
from fedcustom.core.payload import serialize
from fedcustom.core.types import FitContext
from fedcustom.data.batching import encode
from fedcustom.methods.distill import Distill, DistillOptions
from fedcustom.methods.distill_parts import BagOfEmbeddings, load_public_texts, parse_spec
from fedcustom.runs.experiment import run_experiment
from fedcustom.strategies.consensus import Consensus, ConsensusOptions

LN3 = math.log(3.0)
# Client A predicts p = [0.25, 0.75] on one public example, client B [0.75, 0.25], client U [0.5, 0.5].
A = {"logits": torch.tensor([[0.0, LN3]])}
B = {"logits": torch.tensor([[LN3, 0.0]])}
U = {"logits": torch.tensor([[0.0, 0.0]])}
ZERO = {"logits": torch.zeros(1, 2)}


def consensus(results: list, **options: object) -> torch.Tensor:
    strategy = Consensus(build(ConsensusOptions, options))
    return strategy.aggregate(ZERO, updates(results))["logits"]


def test_probability_mean_weighted_by_examples() -> None:
    # 1/4 x [.25, .75] + 3/4 x [.75, .25] = [.625, .375]
    out = consensus([(A, 1), (B, 3)])
    assert torch.allclose(out, torch.tensor([[math.log(0.625), math.log(0.375)]]), atol=1e-6)


def test_every_client_counts_once_without_example_weights() -> None:
    out = consensus([(A, 1), (B, 3)], weight_by_examples=False)
    assert torch.allclose(out, torch.tensor([[math.log(0.5), math.log(0.5)]]), atol=1e-6)


def test_logit_mean() -> None:
    out = consensus([(A, 1), (B, 3)], average="logits")
    assert torch.allclose(out, torch.tensor([[0.75 * LN3, 0.25 * LN3]]), atol=1e-6)


def test_max_prob_confidence_weighting() -> None:
    # confidences .75 (A) and .5 (U): weights .6 and .4 -> .6 x [.25, .75] + .4 x [.5, .5] = [.35, .65]
    out = consensus([(A, 5), (U, 5)], confidence="max_prob")
    assert torch.allclose(out, torch.tensor([[math.log(0.35), math.log(0.65)]]), atol=1e-6)


def test_entropy_confidence_ignores_a_uniform_client() -> None:
    out = consensus([(A, 1), (U, 1)], confidence="entropy")
    assert torch.allclose(out, A["logits"] - torch.logsumexp(A["logits"], -1), atol=1e-6)
    # every client uniform: confidence 0 everywhere falls back to the example weights
    out = consensus([(U, 1), (U, 2)], confidence="entropy")
    assert torch.allclose(out, torch.full((1, 2), math.log(0.5)), atol=1e-6)


def test_temperature_softmax_of_the_consensus_is_the_mean_probability() -> None:
    # at T = 2, logits [0, 2 ln 3] are p = [.25, .75]; with B at T = 2 the mean is [.5, .5]
    a2, b2 = {"logits": 2 * A["logits"]}, {"logits": 2 * B["logits"]}
    out = consensus([(a2, 1), (b2, 1)], temperature=2.0)
    assert torch.allclose(out, torch.full((1, 2), 2 * math.log(0.5)), atol=1e-6)
    assert torch.allclose(torch.softmax(out / 2, -1), torch.tensor([[0.5, 0.5]]), atol=1e-6)


# --- config ------------------------------------------------------------------------------------

def test_distill_needs_a_strategy_that_accepts_logits() -> None:
    with pytest.raises(ConfigError, match="a strategy that accepts 'logits'"):
        build(ExperimentConfig, {"method": {"name": "distill"}, "strategy": {"name": "fedavg"}})
    with pytest.raises(ConfigError, match="accepts 'weights'"):
        build(ExperimentConfig, {"method": {"name": "lora"}, "strategy": {"name": "consensus"}})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("minilm", "expected words like model=minilm"),
        ("model=minilm layers=-1", "layers = -1"),
        ("model=minilm method=lora rank=0", "method.clients[0].rank = 0"),
        ("model=minilm method=lora depth=3", "unknown key 'method.clients[0].depth'"),
        ("model=minilm method=distill", "expected a method that trains weights"),
        ("model=bow method=lora", "a bow model takes only dim and lr"),
        ("model=minilm method=nope", "unknown method 'nope'"),
    ],
)
def test_bad_client_specs_fail_at_config_time(spec: str, message: str) -> None:
    with pytest.raises(ConfigError if "unknown method" not in message else UserError, match=".") as err:
        build(ExperimentConfig, {"method": {"name": "distill", "clients": [spec]},
                                 "strategy": {"name": "consensus"}})
    assert message in str(err.value)


def test_good_client_specs_parse() -> None:
    spec = parse_spec("model=minilm layers=3 method=lora rank=4 lr=0.005", "c")
    assert (spec.model, spec.layers, spec.method, spec.lr, spec.method_options) == (
        "minilm", 3, "lora", 0.005, {"rank": 4})
    assert parse_spec("model=bow dim=16", "c").method == "full"


def test_public_set_from_a_text_file(tmp_path: Path) -> None:
    path = tmp_path / "public.txt"
    path.write_text("one  text\n\ntwo\none text\nthree\n")
    texts = load_public_texts(str(path), "text", 10, [])
    assert sorted(texts) == ["one text", "three", "two"]  # blank and repeated lines dropped
    assert len(load_public_texts(str(path), "text", 2, [])) == 2
    assert len(load_public_texts("guardian-headlines", "text", 50, [])) == 50
    with pytest.raises(UserError, match="method.public = 'nowhere'"):
        load_public_texts("nowhere", "text", 10, [])


# --- the method on tiny models -----------------------------------------------------------------

WORDS = ["great", "dull", "lovely", "awful", "funny", "boring", "warm", "flat", "superb", "weak"]


@pytest.fixture
def public_txt(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "public.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=4)) + f" {i}" for i in range(24)) + "\n")
    return path


def distill_method(tiny_model_dir: Path, public: Path, clients: list[str]) -> tuple[Distill, torch.nn.Module]:
    options = build(DistillOptions, {"clients": clients, "public": str(public), "public_size": 24,
                                     "server_epochs": 2, "server_lr": 0.05})
    method = Distill(options)
    model, _ = method.build_model(ModelConfig(name=str(tiny_model_dir), max_length=16), 2, 0)
    method.prepare(model)
    return method, model


def private_data(method: Distill) -> object:
    texts = [f"the film was {w}" for w in WORDS] * 2
    return encode(texts, [i % 2 for i in range(len(texts))], method.tokenizer, 16)


def test_protocol_server_distills_each_consensus_it_adopts(tiny_model_dir: Path, public_txt: Path) -> None:
    method, model = distill_method(tiny_model_dir, public_txt, [f"model={tiny_model_dir} method=lora"])
    zero = method.get_state(model)
    assert zero["logits"].shape == (24, 2) and not zero["logits"].any()
    method.adopt(model, zero)
    initial = method.server_method.get_state(model)

    data = private_data(method)
    cfg = TrainConfig(batch_size=8, lr=0.05)
    method.fit(model, data, np.arange(len(data)), cfg, FitContext(0, 1, seed=1))
    upload = method.get_state(model)["logits"]
    assert upload.any() and torch.equal(method.server_method.get_state(model)["head.weight"],
                                        initial["head.weight"])  # a client's fit leaves the server alone

    target = torch.tensor([[3.0, -3.0]]).repeat(24, 1)
    server_logits = lambda: method.predict(model, method.server_public)  # noqa: E731
    gap = lambda: float(torch.nn.functional.kl_div(  # noqa: E731
        torch.log_softmax(server_logits(), -1), torch.softmax(target, -1), reduction="batchmean"))
    before = gap()
    method.adopt(model, {"logits": target})  # the server's step on a new consensus
    after = gap()
    assert after < before  # the server model moved toward the consensus
    distilled = method.server_method.get_state(model)
    method.set_state(model, {"logits": target.clone()})  # a client's download: nothing more to learn
    assert all(torch.equal(v, method.server_method.get_state(model)[k]) for k, v in distilled.items())
    assert torch.equal(method.get_state(model)["logits"], target)

    method.adopt(model, zero)  # a fresh start: initial server, no client models
    assert all(torch.equal(v, method.server_method.get_state(model)[k]) for k, v in initial.items())
    assert method.clients == {}


def test_payload_size_does_not_grow_with_the_client_model(tiny_model_dir: Path, public_txt: Path) -> None:
    specs = ["model=bow dim=4", "model=bow dim=256", f"model={tiny_model_dir} layers=1 method=lora",
             f"model={tiny_model_dir} method=full"]
    method, model = distill_method(tiny_model_dir, public_txt, specs)
    method.adopt(model, method.get_state(model))
    data = private_data(method)
    sizes, params = [], []
    for cid in range(len(specs)):
        method.fit(model, data, np.arange(len(data)), TrainConfig(batch_size=8, lr=0.01),
                   FitContext(cid, 1, seed=cid))
        sizes.append(len(serialize(method.get_state(model))))
        params.append(sum(p.numel() for p in method.clients[cid].model.parameters()))
    assert len(set(params)) == len(specs)  # four different model sizes...
    assert params[1] > params[0] and params[3] > params[2]
    assert len(set(sizes)) == 1  # ...one payload size
    assert sizes[0] == len(serialize({"logits": torch.zeros(24, 2)}))
    assert isinstance(method.clients[0].model, BagOfEmbeddings)
    assert len(method.clients[2].model.encoder.base_model.model.encoder.layer) == 1


def test_two_clients_two_rounds_with_two_model_types(tiny_config, tiny_model_dir: Path,
                                                     public_txt: Path) -> None:
    clients = [f"model={tiny_model_dir} method=lora", "model=bow dim=16 lr=0.05"]
    cfg = tiny_config(method={"name": "distill", "clients": clients, "public": str(public_txt),
                              "public_size": 24}, strategy={"name": "consensus"})
    results = run_experiment(cfg, log=lambda *_: None)
    payload = len(serialize({"logits": torch.zeros(24, 2)}))
    for mode, result in results.items():
        records = [json.loads(line) for line in (result.path / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [0, 1, 2]
        for r in records[1:]:
            clients = 2 if mode == "federated" else 1
            assert r["clients"] == r["accepted"] == clients
            assert r["bytes_up"] == r["bytes_down"] == payload * clients
            assert np.isfinite(r["train_loss"]) and 0 <= r["test_accuracy"] <= 1
        assert load_file(result.path / "state.safetensors")["logits"].shape == (24, 2)
        assert (result.path / "adapter" / "adapter_config.json").is_file()  # the server's LoRA, PEFT format


def test_an_interrupted_run_resumes_from_the_consensus(tiny_config, tiny_model_dir: Path,
                                                       public_txt: Path) -> None:
    """Checkpoints hold the consensus only: a resumed run distills it into a fresh server model,
    rebuilds the client models, and finishes every round."""
    from fedcustom.runs.experiment import resume_experiment

    class Stop(KeyboardInterrupt):
        pass

    def stop_after_round_1(mode: str, record: dict) -> None:
        if record["round"] == 1:
            raise Stop

    clients = [f"model={tiny_model_dir} layers=1 method=lora", "model=bow dim=8"]
    cfg = tiny_config(method={"name": "distill", "clients": clients, "public": str(public_txt),
                              "public_size": 24}, strategy={"name": "consensus"}, modes=["federated"])
    with pytest.raises(Stop):
        run_experiment(cfg, log=lambda *_: None, on_record=stop_after_round_1)
    run_dir = next((Path(cfg.output_dir)).iterdir())
    result = resume_experiment(run_dir, log=lambda *_: None)["federated"]
    assert [r["round"] for r in result.records] == [0, 1, 2]
    assert load_file(result.path / "state.safetensors")["logits"].shape == (24, 2)


def test_the_task_public_set_is_the_training_texts_no_client_holds(tiny_config, tiny_model_dir: Path) -> None:
    """public = 'task': the training split's rows beyond data.max_train_examples, unlabeled; local
    mode evaluates each client's own model, which trains alone (no consensus ever arrives)."""
    from fedcustom.data import load_task_data

    clients = [f"model={tiny_model_dir} layers=1 method=lora", "model=bow dim=8 lr=0.05"]
    cfg = tiny_config(method={"name": "distill", "clients": clients, "public": "task", "public_size": 50},
                      strategy={"name": "consensus"}, data={"max_train_examples": 60},
                      modes=["federated", "local"])
    data = load_task_data(cfg.data)
    assert len(data.train) == 60 and len(data.unlabeled) == 90 - 60  # 120 rows, 30 test
    assert not set(data.unlabeled) & (set(data.train["text"]) | set(data.test["text"]))
    results = run_experiment(cfg, log=lambda *_: None)
    assert load_file(results["federated"].path / "state.safetensors")["logits"].shape == (30, 2)
    local = results["local"].records[-1]
    assert local["clients"] == 2 and local["bytes_up"] == 0
    # the two clients' own models (a 1-layer LoRA encoder, a bag of embeddings) predict differently
    per_client = json.loads((results["local"].path / "clients.json").read_text())
    assert len(per_client) == 2
    assert len({json.dumps(m["2"]["test_loss"]) for m in per_client.values()}) == 2
    with pytest.raises(UserError, match="method.public = 'task' needs training texts that no client"):
        run_experiment(tiny_config(method={"name": "distill", "clients": clients, "public": "task"},
                                   strategy={"name": "consensus"}), log=lambda *_: None)
