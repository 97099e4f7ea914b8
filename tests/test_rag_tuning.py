"""Federated retriever tuning: the contrastive loss by hand, a federated round that moves the query
encoder and leaves every index byte-identical, FedAvg of two clients' LoRA states, the sentence
task's held-out queries, the config's errors, and `rag eval` with tuning on a tiny encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcustom.cli import main
from fedcustom.core.errors import UserError
from fedcustom.core.types import Instructions
from fedcustom.federation.rounds import client_update, fit_context
from fedcustom.rag.config import TuningConfig, load_rag_config
from fedcustom.rag.corpus import Query, build_corpus
from fedcustom.rag.experiment import run_rag_experiment
from fedcustom.rag.federation import FederatedRetriever, RagClient
from fedcustom.rag.store import Document, Encoder, LocalStore
from fedcustom.rag.tuning import build_tuner, contrastive_loss, run_federated

TOPICS = {
    "cats": ["the cat purrs on the warm sofa", "kittens chase a ball of wool", "a cat naps in the sun"],
    "trains": ["the express train leaves on time", "rails hum under the carriages", "the station is busy"],
    "bread": ["the baker kneads the dough", "loaves bake in the hot oven", "yeast and flour rise slowly"],
    "rain": ["heavy rain clouds gather", "puddles fill the grey street", "umbrellas open in the storm"],
}


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> Encoder:
    return Encoder(str(tiny_model_dir), max_length=32)


def two_clients(encoder: Encoder) -> tuple[list[LocalStore], list[list[Query]]]:
    """Client 0 holds cats and trains, client 1 bread and rain: one passage per topic (its first
    sentence); a training pair is another sentence of the topic and that passage."""
    stores, pairs = [], []
    for topics in (("cats", "trains"), ("bread", "rain")):
        store = LocalStore(encoder, chunk_size=16, chunk_overlap=0)
        store.add(Document(t, TOPICS[t][0]) for t in topics)
        stores.append(store)
        pairs.append([Query(s, t) for t in topics for s in TOPICS[t][1:]])
    return stores, pairs


def test_contrastive_loss_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # row 0: logits (1, 0.6) / t, positive first; row 1: logits (0, 0.8) / t, positive second
    t = 0.5
    expected = (math.log(1 + math.exp((0.6 - 1) / t)) + math.log(1 + math.exp((0 - 0.8) / t))) / 2
    loss = contrastive_loss(q, p, torch.tensor([0, 1]), t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # two sentences of one article: the other copy of the positive is no negative, so each row
    # has only its positive left and the loss is 0
    assert contrastive_loss(q, p, torch.tensor([7, 7]), t).item() == pytest.approx(0.0, abs=1e-7)
    # an extra row (a hard negative) is a negative of every query but the one it is a copy of
    extra = torch.cat([p, torch.tensor([[0.8, 0.6]])])
    row0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0.6 / t) + math.exp(0.8 / t)))
    row1 = math.log(1 + math.exp((0 - 0.8) / t))
    loss = contrastive_loss(q, extra, torch.tensor([0, 1, 1]), t)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_a_federated_round_moves_the_query_encoder_and_leaves_every_index_unchanged(encoder: Encoder) -> None:
    stores, pairs = two_clients(encoder)
    before = [s.vectors().tobytes() for s in stores]
    cfg = TuningConfig(rounds=3, batch_size=4, lr=5e-2, rank=4, temperature=0.1)
    tuner = build_tuner(stores, pairs, encoder.name, encoder.max_length, 8, cfg, seed=0)
    query = TOPICS["cats"][1]
    start = tuner.query_encoder.encode([query])
    assert np.allclose(start, encoder.encode([query]), atol=1e-6)  # LoRA's B starts at zero

    final, records = run_federated(tuner, cfg, lambda e: {})
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["train_loss"] < records[1]["train_loss"]  # it learns the pairs
    assert records[1]["bytes_up"] == records[1]["bytes_down"] > 0
    assert any(v.abs().sum() > 0 for k, v in final.items() if "lora_B" in k)
    tuner.method.set_state(tuner.tower, final)
    assert not np.allclose(tuner.query_encoder.encode([query]), start, atol=1e-4)
    # the document encoder is untouched: same index bytes, same passage embeddings
    assert [s.vectors().tobytes() for s in stores] == before
    assert np.array_equal(encoder.encode([TOPICS["cats"][0]]), stores[0].vectors()[:1])
    # the tuned tower answers queries against the unchanged indexes, through the exact merge
    clients = [RagClient(s, query_encoder=tuner.query_encoder) for s in stores]
    hits, _ = FederatedRetriever(clients, k=2).retrieve(query)
    assert len(hits) == 2 and clients[0].encoder.endswith("queries: " + tuner.query_encoder.name)


def test_fedavg_of_two_clients_lora_states_is_their_mean(encoder: Encoder) -> None:
    stores, pairs = two_clients(encoder)
    pairs[1] = pairs[1][:2]  # unequal sizes: the mean is weighted by pairs (4 and 2)
    cfg = TuningConfig(rounds=1, batch_size=2, lr=1e-2, rank=2)
    tuner = build_tuner(stores, pairs, encoder.name, encoder.max_length, 8, cfg, seed=3)
    clients = tuner.clients()
    # what each client sends in round 1 (the same seeds the round loop gives it)
    sent = [client_update(clients, tuner.initial, fit_context(tuner.seed, 1, cid, Instructions()))[0]
            for cid in (0, 1)]
    final, _ = run_federated(tuner, cfg, lambda e: {})
    assert set(final) == set(tuner.initial) and all("lora_" in k for k in final)
    for key in final:
        assert not torch.equal(sent[0][key], sent[1][key]) or "lora_A" in key
        mean = (4 * sent[0][key].double() + 2 * sent[1][key].double()) / 6
        torch.testing.assert_close(final[key], mean.float(), rtol=0, atol=1e-7)


def test_sentence_task_indexes_first_passages_and_holds_query_articles_out_of_training() -> None:
    corpus = build_corpus(10, 12, 0, num_clients=4, topics_per_client=2, seed=0, queries="sentence",
                          lead_words=60)
    assert corpus.lead_words == 60 and len(corpus.queries) == 12
    by_id = {a.doc_id: a for docs in corpus.clients for a in docs}
    for q in corpus.queries:
        indexed = by_id[q.doc_id].document(corpus.topic_names, corpus.lead_words).text
        assert len(indexed.split()) == 60 and q.text not in indexed
        assert q.text in by_id[q.doc_id].sentences(60)
    asked = {q.doc_id for q in corpus.queries}
    for c in range(4):
        pairs = corpus.training_pairs(c, 3, seed=0)
        assert pairs and not {p.doc_id for p in pairs} & asked
        assert {p.doc_id for p in pairs} <= {a.doc_id for a in corpus.clients[c]}
        assert not {p.text for p in pairs} & {q.text for q in corpus.queries}
        assert pairs == corpus.training_pairs(c, 3, seed=0)  # deterministic


@pytest.mark.parametrize(("setting", "message"), [
    ("tuning.rounds=-1", "tuning.rounds"),
    ("tuning.temperature=0", "tuning.temperature"),
    ("tuning.batch_size=1", "in-batch negatives"),
    ("tuning.fraction_fit=1.5", "tuning.fraction_fit"),
    ("tuning.pairs_per_document=0", "tuning.pairs_per_document"),
    ("tuning.rounds=2", "corpus.queries = 'sentence'"),  # tuning on the headline task
])
def test_tuning_config_errors_are_one_line(setting: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        load_rag_config(None, [setting])
    assert "\n" not in str(error.value)
    assert load_rag_config(None, ["corpus.queries=sentence", "tuning.rounds=2"]).tuning.rounds == 2


def test_rag_eval_with_tuning_writes_every_variant_and_the_curve(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    config = tmp_path / "rag.toml"
    config.write_text(f"""
name = "tiny-tuning"
output_dir = "{tmp_path / 'runs'}"
[encoder]
name = "{tiny_model_dir}"
max_length = 48
[store]
chunk_size = 30
[corpus]
documents_per_topic = 4
retrieval_queries = 6
topic_questions = 0
queries = "sentence"
[split]
num_clients = 3
topics_per_client = 2
[tuning]
rounds = 2
batch_size = 4
""")
    run_dir = run_rag_experiment(load_rag_config(config), log=lambda _: None)
    tuning = json.loads((run_dir / "metrics.json").read_text())["tuning"]
    variants = tuning["variants"]
    assert set(variants) == {"frozen", "federated", "centralized", "local-only (mean over clients)"}
    assert tuning["document_vectors_unchanged"] is True
    curve = tuning["curves"]["federated"]
    assert [r["round"] for r in curve] == [0, 1, 2]
    assert curve[0]["recall@5"] == variants["frozen"]["recall@5"]  # round 0 is the frozen encoder
    assert curve[-1]["recall@5"] == variants["federated"]["recall@5"]
    assert len(tuning["local_per_client"]) == 3
    assert "## Federated retriever tuning" in (run_dir / "report.md").read_text()
    assert main(["rag", "eval", str(config), "--set", "tuning.lr=0"]) == 2
