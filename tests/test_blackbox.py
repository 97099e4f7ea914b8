"""Black-box prompt methods: score aggregation by hand, the server's mutations, a 2-client x 2-round
run of each method on a tiny random Llama, and proof that the model's weights are never touched."""

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
from fedcustom.core.registry import METHODS
from fedcustom.core.types import FitContext
from fedcustom.data.batching import encode, take
from fedcustom.methods.blackbox import VerbalizerLM, hidden_states
from fedcustom.methods.prompt_search import initial_candidates
from fedcustom.runs.experiment import run_experiment
from fedcustom.strategies.search import ScoreSearch, ScoreSearchOptions, mutate, propose

TEXTS = ["a warm and funny film", "dull", "the plot was tedious and the acting flat", "superb"] * 4
LABELS = [1, 0, 0, 1] * 4


def method_and_model(model_dir: Path, name: str, **options: object):
    method = METHODS.get(name)(build(METHODS.get(name).Options, options))
    model, tokenizer = method.build_model(ModelConfig(name=str(model_dir), max_length=16), 2, 0)
    method.prepare(model)
    return method, model, tokenizer


# --- the server: score aggregation and proposals -------------------------------------------------

def search_state(candidates: list[list[int]], pools: list[int]) -> dict[str, torch.Tensor]:
    return {"candidates": torch.tensor(candidates), "best": torch.tensor(candidates[0]),
            "scores": torch.zeros(len(candidates), dtype=torch.float64), "pool_sizes": torch.tensor(pools)}


def scored(state: dict[str, torch.Tensor], scores: list[float]) -> dict[str, torch.Tensor]:
    return {**state, "scores": torch.tensor(scores, dtype=torch.float64)}


def test_score_aggregation_on_hand_computed_numbers() -> None:
    state = search_state([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [3, 2, 2])
    strategy = ScoreSearch(ScoreSearchOptions(candidates=4, keep=2))
    other_set = {**scored(state, [1.0, 1.0, 1.0]), "candidates": torch.tensor([[2, 1, 1]] * 3)}
    out = strategy.aggregate(state, updates([(scored(state, [0.5, 0.75, 0.25]), 1),
                                     (scored(state, [1.0, 0.25, 0.5]), 3),
                                     (other_set, 100)]))  # scored another set: left out
    # weights 1/4 and 3/4: [0.875, 0.375, 0.4375] -> best candidate 0, then candidate 2
    assert out["best"].tolist() == [0, 0, 0]
    assert out["candidates"][:2].tolist() == [[0, 0, 0], [0, 1, 0]]
    assert out["scores"].tolist() == [0.875, 0.4375, 0.0, 0.0]
    assert len(out["candidates"]) == 4 and len({tuple(r) for r in out["candidates"].tolist()}) == 4
    assert strategy.round_record() == {"search_best_score": 0.875, "search_best": [0, 0, 0],
                                       "search_candidates": 3, "search_mismatched": 1}


def test_ties_keep_the_earlier_candidate_and_no_usable_result_keeps_the_state() -> None:
    state = search_state([[0, 0], [1, 0]], [2, 2])
    strategy = ScoreSearch(ScoreSearchOptions(candidates=2, keep=1))
    assert strategy.aggregate(state, updates([(scored(state, [0.5, 0.5]), 2)]))["best"].tolist() == [0, 0]
    foreign = {**scored(state, [0.0, 1.0]), "candidates": torch.tensor([[1, 1], [0, 1]])}
    kept = strategy.aggregate(state, updates([(foreign, 5)]))
    assert all(torch.equal(kept[k], state[k]) for k in state)
    assert strategy.round_record() == {"search_mismatched": 1}


def test_mutations_change_one_index_within_its_pool_and_are_seeded() -> None:
    pools = [3, 4, 1]
    rng = np.random.default_rng(0)
    for _ in range(200):
        child = mutate([1, 2, 0], pools, 0.5, rng)
        changed = [i for i in range(3) if child[i] != [1, 2, 0][i]]
        assert len(changed) == 1 and changed[0] in (0, 1) and 0 <= child[changed[0]] < pools[changed[0]]
    a = propose([[0, 0, 0]], pools, 6, 0.5, np.random.default_rng(1))
    assert a == propose([[0, 0, 0]], pools, 6, 0.5, np.random.default_rng(1))
    assert len(a) == 6 and len({tuple(r) for r in a}) == 6
    assert len(propose([[0, 0]], [2, 1], 8, 0.5, np.random.default_rng(0))) == 2  # only 2 exist


def test_initial_candidates_are_templates_and_single_word_changes() -> None:
    assert initial_candidates([3, 2, 2]).tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 1]]


# --- the client: a verbalizer over a frozen causal LM -------------------------------------------

def test_label_scores_are_the_lms_next_token_logits(wordpiece_llama_dir: Path) -> None:
    """The wrapper's score equals the full LM's logit of the label word after template + text."""
    from transformers import AutoModelForCausalLM

    _, model, tokenizer = method_and_model(wordpiece_llama_dir, "prompt-search")
    model.choice = [1, 2, 3]
    data = encode(["a warm film", "dull"], [1, 0], tokenizer, 16)
    batch = take(data, np.arange(2))
    with torch.inference_mode():
        ours = model(batch.input_ids, batch.attention_mask)
        lm = AutoModelForCausalLM.from_pretrained(wordpiece_llama_dir)
        before, after = model.templates[1]
        words = [model.word_ids[0][2], model.word_ids[1][3]]
        for i, text in enumerate(["a warm film", "dull"]):
            ids = before + tokenizer(text, add_special_tokens=False)["input_ids"] + after
            full = lm(torch.tensor([ids])).logits[0, -1, words]
            assert torch.allclose(ours[i], full, atol=1e-5)


@pytest.mark.parametrize(("name", "options"), [
    ("prompt-search", {"score_examples": 8}),
    ("bbpt", {"score_examples": 8, "intrinsic_dim": 8, "popsize": 3, "generations": 2}),
])
def test_local_work_never_touches_the_weights(wordpiece_llama_dir: Path, name: str, options: dict) -> None:
    method, model, tokenizer = method_and_model(wordpiece_llama_dir, name, **options)
    assert isinstance(model, VerbalizerLM)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = method.get_state(model)
    data = encode(TEXTS, LABELS, tokenizer, 16)
    local = method.fit(model, data, np.arange(16), TrainConfig(eval_batch_size=4), FitContext(0, 1, seed=3))
    after = method.get_state(model)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert [n for n, p in model.named_parameters() if not torch.equal(p, before[n])] == []
    assert set(after) == set(state)
    if name == "prompt-search":  # 8 examples x 6 templates; every candidate got a score
        assert local.forward_passes == 8 * 6
        assert torch.equal(after["candidates"], state["candidates"])
        assert bool((after["scores"] >= 0).all() and (after["scores"] <= 1).all())
    else:  # 8 examples x (the start + 3 candidates x 2 generations)
        assert local.forward_passes == 8 * 7
        assert not torch.equal(after["z"], state["z"])


def test_bbpt_prompt_is_init_plus_projection_of_z(wordpiece_llama_dir: Path) -> None:
    method, model, _ = method_and_model(wordpiece_llama_dir, "bbpt", intrinsic_dim=4, num_virtual_tokens=3)
    assert torch.equal(model.soft_prompt, model.prompt_init)  # z starts at 0
    z = torch.tensor([1.0, -2.0, 0.5, 0.0])
    method.set_state(model, {"z": z})
    assert torch.allclose(model.soft_prompt, model.prompt_init + (model.projection @ z).view(3, 32))
    _, again, _ = method_and_model(wordpiece_llama_dir, "bbpt", intrinsic_dim=4, num_virtual_tokens=3)
    assert torch.equal(again.projection, model.projection)  # every party rebuilds the same A
    with pytest.raises(UserError, match="bbpt z must be float32"):
        method.set_state(model, {"z": torch.zeros(5)})


def test_vprompt_scores_as_bbpt_does_and_trains_only_its_prompt(wordpiece_llama_dir: Path) -> None:
    """The white-box counterpart: at the start its prompt is bbpt's p0 and every example gets the
    same label logits; a round of gradient steps moves the prompt alone and lowers the loss."""
    bbpt, bbpt_model, tokenizer = method_and_model(wordpiece_llama_dir, "bbpt", num_virtual_tokens=3)
    method, model, _ = method_and_model(wordpiece_llama_dir, "vprompt", num_virtual_tokens=3)
    data = encode(TEXTS, LABELS, tokenizer, 16)
    batch = take(data, np.arange(len(data)))
    with torch.no_grad():
        torch.testing.assert_close(model(batch.input_ids, batch.attention_mask),
                                   bbpt_model(batch.input_ids, batch.attention_mask))
    assert list(method.get_state(model)) == ["soft_prompt"]
    weights = {k: v.clone() for k, v in model.lm.state_dict().items()}
    before = model.soft_prompt.detach().clone()
    first = method.fit(model, data, np.arange(len(data)), TrainConfig(batch_size=8, lr=0.05, local_epochs=1),
                       FitContext(cid=0, server_round=1, seed=0))
    later = method.fit(model, data, np.arange(len(data)), TrainConfig(batch_size=8, lr=0.05, local_epochs=3),
                       FitContext(cid=0, server_round=2, seed=1))
    assert later.loss < first.loss and first.backward_passes == len(data)
    assert not torch.equal(model.soft_prompt, before)
    assert all(torch.equal(v, weights[k]) for k, v in model.lm.state_dict().items())


# --- end to end through the shared experiment code ---------------------------------------------

@pytest.mark.parametrize(("method", "strategy"), [
    ({"name": "prompt-search", "score_examples": 8}, {"name": "score-search", "candidates": 4}),
    ({"name": "bbpt", "score_examples": 8, "intrinsic_dim": 8, "popsize": 3, "generations": 1},
     {"name": "fedavg"}),
])
def test_two_clients_two_rounds(tiny_config, wordpiece_llama_dir: Path, method: dict, strategy: dict) -> None:
    cfg = tiny_config(model={"name": str(wordpiece_llama_dir)}, method=method, strategy=strategy,
                      modes=["federated"])
    path = run_experiment(cfg, log=lambda *_: None)["federated"].path
    records = [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert r["clients"] == r["accepted"] == 2 and r["bytes_up"] > 0
        assert 0 <= r["test_accuracy"] <= 1
    exported = json.loads((path / "adapter" / "prompt.json").read_text())
    # the engine puts the clients' counts into the round records: forward only, no backward
    passes = sum(r["forward_passes"] for r in records[1:])
    assert all(r["backward_passes"] == 0 for r in records[1:])
    if method["name"] == "prompt-search":
        # round 1: 2 clients x 8 examples x 6 templates; round 2: the 1..4 templates of 4 candidates
        assert (passes - 96) % 16 == 0 and 16 <= passes - 96 <= 64
        assert records[2]["search_candidates"] == 4 and records[1]["search_candidates"] == 14
        assert exported["template"] in cfg.method.options.templates
        # what travels is indices and scores: no text, nothing per example
        state = load_file(path / "state.safetensors")
        assert set(state) == {"candidates", "scores", "best", "pool_sizes"}
        assert state["scores"].shape == (4,) and state["candidates"].dtype == torch.int16
    else:  # 4 fits x 8 examples x (the start + 3 candidates x 1 generation)
        assert passes == 4 * 8 * 4
        assert (path / "adapter" / "soft_prompt.safetensors").is_file()


def test_bad_black_box_input_is_refused(wordpiece_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match="accepts 'scores'"):
        build(ExperimentConfig, {"method": {"name": "prompt-search"}, "strategy": {"name": "fedavg"}})
    with pytest.raises(ConfigError, match="method.templates"):
        build(ExperimentConfig, {"method": {"name": "bbpt", "templates": ["no slot"]}})
    method = METHODS.get("prompt-search")(build(METHODS.get("prompt-search").Options, {}))
    with pytest.raises(UserError, match="label_words has 2 entries; the data has 3 labels"):
        method.build_model(ModelConfig(name=str(wordpiece_llama_dir)), 3, 0)


def test_bf16_scoring_is_close_to_fp32(wordpiece_llama_dir: Path) -> None:
    _, model, tokenizer = method_and_model(wordpiece_llama_dir, "prompt-search")
    data = encode(TEXTS, LABELS, tokenizer, 16)
    fp32, labels = hidden_states(model, data, np.arange(16), 0, 4)
    bf16, _ = hidden_states(model, data, np.arange(16), 0, 4, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.device.type == "cpu"
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.1)
    assert len(labels) == 16
