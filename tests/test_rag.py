"""Federated RAG: exact merge = centralized top-k, RRF, two-phase traffic, store persistence and
updates, metrics, the topic split, and end-to-end ask/eval with a tiny encoder and a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcustom.cli import main
from fedcustom.core.errors import UserError
from fedcustom.rag.ask import ask, open_retriever
from fedcustom.rag.config import load_rag_config
from fedcustom.rag.corpus import build_corpus
from fedcustom.rag.evaluate import parse_topic, recall_at_k, reciprocal_rank
from fedcustom.rag.experiment import run_rag_experiment
from fedcustom.rag.federation import (
    FederatedRetriever,
    Hit,
    RagClient,
    centralized_store,
    merge_by_score,
    merge_rrf,
    publish_summaries,
)
from fedcustom.rag.generate import Generator
from fedcustom.rag.routing import Summary, SummaryRouter, client_scores, holds, route, term_filter, words
from fedcustom.rag.store import Document, Encoder, LocalStore, Passage, chunk_words

TOPICS = {
    "cats": "the cat purrs and naps on the warm sofa while kittens chase a ball of wool",
    "trains": "the express train leaves the station on time and rails hum under the carriages",
    "bread": "the baker kneads dough with yeast and flour then bakes crusty loaves in the oven",
    "rain": "heavy rain clouds bring storms and puddles while umbrellas open in the grey street",
}


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> Encoder:
    return Encoder(str(tiny_model_dir), max_length=64)


def documents(topic: str, n: int) -> list[Document]:
    words = TOPICS[topic].split()
    return [Document(f"{topic}/{i}", " ".join(words[i:] + words[:i]), {"topic": topic}) for i in range(n)]


def random_stores(encoder: Encoder, sizes: list[int], seed: int) -> list[LocalStore]:
    rng = np.random.default_rng(seed)
    stores = []
    for c, n in enumerate(sizes):
        vectors = rng.standard_normal((n, encoder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store = LocalStore(encoder)
        store.add_passages([Passage(f"c{c}-{i}", f"text {c}-{i}", {}) for i in range(n)], vectors)
        stores.append(store)
    return stores


def client_lists(stores: list[LocalStore], query: np.ndarray, k_c: int) -> list[list[Hit]]:
    lists = []
    for c, store in enumerate(stores):
        scores, ids = store.search_vectors(query, k_c)
        lists.append([Hit(c, int(i), float(s), r, doc_id=store.passages[i].doc_id)
                      for r, (i, s) in enumerate(zip(ids, scores, strict=True))])
    return lists


# --- merging -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_merge_equals_centralized_top_k_on_random_vectors(encoder: Encoder, seed: int) -> None:
    stores = random_stores(encoder, [40, 7, 25, 3], seed)  # one client smaller than k
    union = centralized_store(stores)
    queries = np.random.default_rng(100 + seed).standard_normal((20, encoder.dim)).astype(np.float32)
    for k in (1, 5, 10):
        for query in queries:
            merged = merge_by_score(client_lists(stores, query[None], k), k, 60)
            scores, ids = union.search_vectors(query[None], k)
            assert [h.doc_id for h in merged] == [union.passages[i].doc_id for i in ids]
            np.testing.assert_allclose([h.score for h in merged], scores, rtol=1e-6)


def test_merge_is_exact_only_when_each_client_returns_k(encoder: Encoder) -> None:
    # Client 0 holds the five passages nearest the query: a per-client k of 2 must miss three.
    query = np.eye(encoder.dim, dtype=np.float32)[:1]
    near = query + 0.01 * np.arange(1, 6, dtype=np.float32)[:, None]
    far = np.eye(encoder.dim, dtype=np.float32)[1:6]
    stores = [LocalStore(encoder), LocalStore(encoder)]
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    stores[0].add_passages([Passage(f"near{i}", "", {}) for i in range(5)], near)
    stores[1].add_passages([Passage(f"far{i}", "", {}) for i in range(5)], far)
    assert [h.doc_id for h in merge_by_score(client_lists(stores, query, 5), 5, 60)] == [
        f"near{i}" for i in range(5)]
    limited = merge_by_score(client_lists(stores, query, 2), 5, 60)
    # Each client returns 2, so the server sees 4 candidates and keeps two far ones.
    assert [h.doc_id for h in limited][:2] == ["near0", "near1"]
    assert len(limited) == 4 and sum(h.doc_id.startswith("far") for h in limited) == 2


def test_rrf_interleaves_disjoint_lists_by_rank() -> None:
    lists = [[Hit(0, i, 0.9 - i / 10, i) for i in range(3)], [Hit(1, i, 0.5 - i / 10, i) for i in range(3)]]
    merged = merge_rrf(lists, 4, 60)
    assert [(h.client, h.rank) for h in merged] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert merged[0].fused == pytest.approx(1 / 61)


# --- the protocol over text --------------------------------------------------------------------

class RecordingClient(RagClient):
    """A real client that also keeps the requests it received."""

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store)
        self.requests: list[dict] = []

    def handle(self, request: bytes) -> bytes:
        self.requests.append(json.loads(request))
        return super().handle(request)


def text_stores(encoder: Encoder) -> list[LocalStore]:
    stores = []
    for topic in TOPICS:
        store = LocalStore(encoder, chunk_size=8, chunk_overlap=2)
        store.add(documents(topic, 3))
        stores.append(store)
    return stores


def test_federated_retrieval_matches_centralized_and_two_phase_sends_only_winners(encoder: Encoder) -> None:
    stores = text_stores(encoder)
    central = FederatedRetriever([RagClient(centralized_store(stores))], k=4, two_phase=False)
    one = FederatedRetriever([RagClient(s) for s in stores], k=4, two_phase=False)
    clients = [RecordingClient(s) for s in stores]
    two = FederatedRetriever(clients, k=4)
    for query in ["a kitten naps on the sofa", "storms and umbrellas", "crusty loaves of bread"]:
        expected, _ = central.retrieve(query)
        hits_one, traffic_one = one.retrieve(query)
        hits_two, traffic_two = two.retrieve(query)
        for hits in (hits_one, hits_two):
            assert [(h.doc_id, h.text) for h in hits] == [(h.doc_id, h.text) for h in expected]
            np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], rtol=1e-6)
        assert traffic_one.passages_sent == 4 * len(stores) and traffic_two.passages_sent == 4
        assert traffic_two.up < traffic_one.up
        winners = {h.client for h in hits_two}
        fetched = {c for c, client in enumerate(clients) if client.requests[-1]["op"] == "fetch"}
        assert fetched == winners  # a client without winners sends no text


def test_traffic_counts_the_serialized_messages(encoder: Encoder) -> None:
    clients = [RecordingClient(s) for s in text_stores(encoder)]
    _, traffic = FederatedRetriever(clients, k=3, per_client_k=2).retrieve("the train station")
    sent = [json.dumps(r, separators=(",", ":")).encode() for c in clients for r in c.requests]
    assert traffic.down == sum(len(s) for s in sent)
    assert all(r["k"] == 2 for c in clients for r in c.requests if r["op"] == "search")


# --- query routing -----------------------------------------------------------------------------

def test_routing_picks_the_clients_with_the_nearest_centroid_by_hand() -> None:
    e = np.eye(3, dtype=np.float32)
    vectors = (e[[0]], np.stack([e[1], e[2]]), np.zeros((0, 3), np.float32), e[[2]] * 0.5)
    summaries = [Summary(c) for c in vectors]
    query = np.array([[0.1, 0.6, 0.8]], dtype=np.float32)
    # cosines: client 0 0.1; client 1 max(0.6, 0.8) = 0.8; client 2 no summary; client 3 0.4
    scores = client_scores(query, summaries)
    np.testing.assert_allclose(scores[[0, 1, 3]], [0.1, 0.8, 0.4], rtol=1e-6)
    assert scores[2] == -np.inf
    assert route(scores, 1) == [1] and route(scores, 2) == [1, 3] and route(scores, 3) == [0, 1, 3]
    assert route(client_scores(np.zeros((1, 3), np.float32), summaries), 2) == [0, 1]  # ties: lower index


def test_term_filter_holds_its_words_and_the_lexical_score_is_a_client_level_idf_by_hand() -> None:
    assert words("The Bank of England's rate, 2025!") == {"the", "bank", "england", "rate", "2025"}
    texts = ["Gordon Brown spoke at the Treasury", "the budget"]
    packed = term_filter(texts, 1024)
    assert packed.dtype == np.uint8 and len(packed) == 128
    assert all(holds(packed, w) for w in words(" ".join(texts)))
    absent = [f"word{i}" for i in range(200)]
    assert sum(holds(packed, w) for w in absent) < 5  # 7 words in 1,024 bits: ~0.01% false positives
    with pytest.raises(UserError, match="term_bits = 12"):
        term_filter(texts, 12)
    flat = np.ones((1, 2), np.float32) / np.sqrt(2)
    summaries = [Summary(flat, term_filter(["brown treasury budget"], 4096)),
                 Summary(flat, term_filter(["the treasury"], 4096)),
                 Summary(flat, term_filter(["the match"], 4096))]
    query = np.array([[1.0, 0.0]], np.float32)  # every client's cosine: 1/sqrt(2)
    # "the" (held by 2 of 3 clients: log 3/2), "brown" (1 of 3: log 3), "treasury" (2: log 3/2)
    lexical = [np.log(3) + np.log(1.5), 2 * np.log(1.5), np.log(1.5)]
    got = client_scores(query, summaries, "The Brown treasury", term_weight=0.5)
    np.testing.assert_allclose(got, 1 / np.sqrt(2) + 0.5 * np.array(lexical), rtol=1e-6)
    assert route(got, 1) == [0] and route(client_scores(query, summaries, "the match", 1.0), 1) == [2]
    encoder_free = [Summary(flat)] * 3
    with pytest.raises(UserError, match="term_bits > 0"):
        SummaryRouter(encoder_free, 1, encoder=None, term_weight=1.0)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="term_weight = -1"):
        SummaryRouter(summaries, 1, encoder=None, term_weight=-1.0)  # type: ignore[arg-type]


def test_routed_retrieval_asks_only_the_chosen_clients_and_all_of_them_is_exact(encoder: Encoder) -> None:
    stores = text_stores(encoder)
    clients = [RecordingClient(s) for s in stores]
    summaries, summary_bytes = publish_summaries(clients, 2, seed=0)
    assert [len(s.centroids) for s in summaries] == [2] * len(stores) and summary_bytes > 0
    assert all(np.allclose(np.linalg.norm(s.centroids, axis=1), 1, atol=2e-3) for s in summaries)  # float16
    assert all(len(s.terms) == 0 for s in summaries)
    with_terms, with_terms_bytes = publish_summaries(clients, 2, seed=0, term_bits=8192)
    assert all(len(s.terms) == 1024 for s in with_terms)
    assert with_terms_bytes > summary_bytes + 1024 * len(stores)
    for store, s in zip(stores, with_terms, strict=True):  # each filter holds its client's words
        assert all(holds(s.terms, w) for p in store.passages for w in words(p.text))
    exact = FederatedRetriever([RagClient(s) for s in stores], k=3)
    everyone = FederatedRetriever([RagClient(s) for s in stores], k=3,
                                  router=SummaryRouter(summaries, len(stores), encoder))
    one = FederatedRetriever(clients, k=3, router=SummaryRouter(summaries, 1, encoder))
    for query in ["a kitten naps on the sofa", "crusty loaves of bread"]:
        expected, traffic = exact.retrieve(query)
        assert [h.doc_id for h in everyone.retrieve(query)[0]] == [h.doc_id for h in expected]
        for c in clients:
            c.requests.clear()
        hits, routed = one.retrieve(query)
        chosen = route(client_scores(encoder.encode_query(query), summaries), 1)
        assert routed.clients_queried == 1 and traffic.clients_queried == len(stores)
        assert [c for c, client in enumerate(clients) if client.requests] == chosen
        assert {h.client for h in hits} == set(chosen) and routed.down < traffic.down
        lexical = SummaryRouter(with_terms, 1, encoder, term_weight=10.0).choose(query)
        assert lexical == route(client_scores(encoder.encode_query(query), with_terms, query, 10.0), 1)
    with pytest.raises(UserError, match="clients_per_query = 5"):
        SummaryRouter(summaries, 5, encoder)


def test_score_merge_refuses_clients_with_different_encoders_rrf_accepts(
        encoder: Encoder, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    other_dir = tmp_path / "other-bert"
    torch.manual_seed(1)
    config = BertConfig(vocab_size=encoder.tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(other_dir)
    encoder.tokenizer.save_pretrained(other_dir)
    a, b = LocalStore(encoder), LocalStore(Encoder(str(other_dir), max_length=64))
    a.add(documents("cats", 3))
    b.add(documents("rain", 3))
    with pytest.raises(UserError, match="different encoders"):
        FederatedRetriever([RagClient(a), RagClient(b)], k=4, merge="score")
    hits, _ = FederatedRetriever([RagClient(a), RagClient(b)], k=4, merge="rrf").retrieve("wet storm")
    assert [h.client for h in hits] in ([0, 1, 0, 1], [1, 0, 1, 0]) and all(h.text for h in hits)


# --- stores ------------------------------------------------------------------------------------

def test_chunk_words_windows_overlap_and_cover_the_text() -> None:
    text = " ".join(f"w{i}" for i in range(10))
    assert chunk_words(text, 4, 1) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunk_words("a b", 4, 1) == ["a b"]
    assert chunk_words("  ", 4, 1) == []


def test_store_round_trip_and_adding_documents_updates_the_index(encoder: Encoder, tmp_path: Path) -> None:
    store = LocalStore(encoder, chunk_size=8, chunk_overlap=2)
    store.add(documents("cats", 2) + documents("trains", 2))
    store.save(tmp_path / "store")
    loaded = LocalStore.load(tmp_path / "store")  # the encoder is found again by its saved name
    assert loaded.passages == store.passages and loaded.encoder.name == encoder.name
    for query in ("sleepy cat", "late train"):
        np.testing.assert_array_equal(loaded.search(query, 3)[1], store.search(query, 3)[1])
        np.testing.assert_allclose(loaded.search(query, 3)[0], store.search(query, 3)[0], rtol=1e-6)

    before = len(loaded)
    added = loaded.add(documents("bread", 1))
    assert added > 0 and len(loaded) == before + added == loaded.index.ntotal
    scores, ids = loaded.search(TOPICS["bread"], 1)
    assert loaded.passages[ids[0]].doc_id == "bread/0"
    loaded.save(tmp_path / "store")  # overwrite in place
    assert len(LocalStore.load(tmp_path / "store")) == before + added
    with pytest.raises(UserError, match="already in the store"):
        loaded.add(documents("bread", 1))


def test_loading_a_folder_that_is_not_a_store_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a fedcustom RAG store"):
        LocalStore.load(tmp_path)


# --- metrics and corpus ------------------------------------------------------------------------

def test_retrieval_metrics_and_topic_parsing() -> None:
    ranked = ["a", "b", "b", "c"]
    assert recall_at_k(ranked, "c", 3) == 0.0 and recall_at_k(ranked, "c", 4) == 1.0
    assert reciprocal_rank(ranked, "b", 4) == 0.5 and reciprocal_rank(ranked, "z", 4) == 0.0
    names = ["business", "politics", "sports", "tech"]
    assert parse_topic(" Sports.", names) == 2
    assert parse_topic("Business, Politics, Sports", names) is None  # listing options is no answer
    assert parse_topic("no idea", names) is None


def test_bbc_split_gives_each_client_its_own_topic_and_holds_questions_out() -> None:
    corpus = build_corpus(8, 10, 10, num_clients=5, topics_per_client=1, seed=0)
    topics = [{a.topic for a in docs} for docs in corpus.clients]
    assert all(len(t) == 1 for t in topics) and len(set.union(*topics)) == 5
    stored = {a.doc_id for docs in corpus.clients for a in docs}
    assert len(stored) == 40 and {a.doc_id for a in corpus.retrieval_queries} <= stored
    assert not stored & {a.doc_id for a in corpus.topic_questions}
    assert sorted(a.topic for a in corpus.topic_questions) == sorted(list(range(5)) * 2)


# --- generation, CLI and the experiment --------------------------------------------------------

def test_end_to_end_ask_with_a_tiny_generator(encoder: Encoder, wordpiece_llama_dir: Path) -> None:
    retriever = FederatedRetriever([RagClient(s) for s in text_stores(encoder)], k=3)
    generator = Generator(str(wordpiece_llama_dir), max_new_tokens=4, answer_prefix="Topic:")
    result = ask("where does the cat sleep?", retriever, generator, context_passages=2)
    prompt = generator.prompt(result.question, result.passages[:2])
    assert len(result.passages) == 3 and result.passages[0].text in prompt and prompt.endswith("Topic:")
    assert "[topic: " in prompt and isinstance(result.answer, str)
    assert ask("where does the cat sleep?", retriever, generator, 2).answer == result.answer  # greedy


def test_choose_picks_the_option_with_the_highest_log_likelihood(wordpiece_llama_dir: Path) -> None:
    generator = Generator(str(wordpiece_llama_dir), answer_prefix="Topic:")
    options = ["cats", "trains", "zyxwvq plover"]  # the last is several tokens: the slow path
    ids = generator.encode(generator.prompt("which?"))["input_ids"]
    scores = []
    for option in options:
        tokens = generator.tokenizer(" " + option, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logits = generator.model(input_ids=torch.cat([ids, tokens], 1)).logits[0]
        logp = torch.log_softmax(logits[ids.shape[1] - 1:-1], -1)
        scores.append(sum(float(logp[i, t]) for i, t in enumerate(tokens[0])))
    assert generator.choose("which?", options) == int(np.argmax(scores))
    assert generator.choose("which?", options[::-1]) == len(options) - 1 - int(np.argmax(scores))


def test_generator_loads_a_peft_adapter(wordpiece_llama_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(wordpiece_llama_dir)
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    generator = Generator(str(wordpiece_llama_dir), adapter=str(tmp_path / "adapter"), max_new_tokens=2)
    assert isinstance(generator.model, PeftModel) and isinstance(generator.answer("hello?"), str)
    with pytest.raises(UserError, match="adapter_config.json"):
        Generator(str(wordpiece_llama_dir), adapter=str(tmp_path))


def test_cli_index_add_and_ask(tiny_model_dir: Path, wordpiece_llama_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    for topic in ("cats", "rain"):
        docs = tmp_path / f"{topic}.jsonl"
        docs.write_text("".join(json.dumps({"id": d.doc_id, "text": d.text, **d.meta}) + "\n"
                                for d in documents(topic, 2)))
        store = tmp_path / f"store-{topic}"
        assert main(["rag", "index", str(store), "--docs", str(docs), "--encoder", str(tiny_model_dir),
                     "--chunk-size", "8", "--chunk-overlap", "2"]) == 0
    more = tmp_path / "more"
    more.mkdir()
    (more / "bread.txt").write_text(TOPICS["bread"])
    assert main(["rag", "index", str(tmp_path / "store-cats"), "--docs", str(more)]) == 0
    assert "bread.txt" in LocalStore.load(tmp_path / "store-cats").doc_ids
    capsys.readouterr()
    assert main(["rag", "ask", "a kitten on the sofa", "--stores", str(tmp_path / "store-cats"),
                 str(tmp_path / "store-rain"), "--k", "3", "--generator", str(wordpiece_llama_dir),
                 "--max-new-tokens", "3", "--json", "--query", " ".join(TOPICS["bread"].split()[:8])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["passages"]) == 3 and out["traffic"]["passages_sent"] == 3
    # --query is what is searched (here the text of bread.txt's first passage), not the question
    assert out["passages"][0]["doc_id"] == "bread.txt"
    stores = [str(tmp_path / "store-cats"), str(tmp_path / "store-rain")]
    assert main(["rag", "ask", "q", "--query", " ".join(TOPICS["bread"].split()[:8]), "--stores", *stores,
                 "--no-generate", "--json", "--route", "1", "--centroids", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["traffic"]["clients_queried"] == 1 and out["passages"][0]["doc_id"] == "bread.txt"
    assert main(["rag", "ask", "q", "--query", " ".join(TOPICS["bread"].split()[:8]), "--stores", *stores,
                 "--no-generate", "--json", "--route", "1", "--centroids", "2", "--term-weight", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["traffic"]["clients_queried"] == 1 and out["passages"][0]["doc_id"] == "bread.txt"
    assert main(["rag", "ask", "q", "--stores", *stores, "--no-generate", "--route", "3"]) == 2  # 2 clients
    assert main(["rag", "ask", "q", "--stores", str(tmp_path / "nowhere"), "--no-generate"]) == 2


def test_rag_eval_writes_metrics_and_report(tiny_model_dir: Path, wordpiece_llama_dir: Path,
                                            tmp_path: Path) -> None:
    config = tmp_path / "rag.toml"
    config.write_text(f"""
name = "tiny-rag"
output_dir = "{tmp_path / 'runs'}"
[encoder]
name = "{tiny_model_dir}"
max_length = 64
[corpus]
documents_per_topic = 3
retrieval_queries = 8
topic_questions = 5
[routing]
clients_per_query = [2, 5]
centroids = [1, 2]
term_weights = [0, 0.1]
term_bits = 4096
validation_queries = 4
[generator]
name = "{wordpiece_llama_dir}"
max_new_tokens = 2
""")
    run_dir = run_rag_experiment(load_rag_config(config), log=lambda _: None)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    central = metrics["retrieval"]["centralized"]
    exact = metrics["retrieval"]["federated exact (score), two phases"]
    assert exact["agreement@5_with_centralized"] == 1.0 and exact["recall@5"] == central["recall@5"]
    assert exact["passages_sent_per_query"] == 5 and exact["clients_queried_per_query"] == 5
    routing = metrics["routing"]
    settings = [(v["centroids"], v["term_weight"], v["clients_per_query"]) for v in routing["variants"]]
    assert settings == [(c, w, n) for c in (1, 2) for w in (0, 0.1) for n in (2, 5)]
    for v in routing["variants"]:
        assert v["test"]["clients_queried_per_query"] == v["validation"]["clients_queried_per_query"] == \
            v["clients_per_query"]
        if v["clients_per_query"] == 5:  # every client asked: the exact merge
            assert v["test"]["recall@5"] == exact["recall@5"]
            assert v["validation"]["recall@5"] == routing["exact_validation"]["recall@5"]
        else:
            assert v["test"]["bytes_down_per_query"] < exact["bytes_down_per_query"]
    assert routing["validation_queries"] == 4
    summary = routing["summary_bytes_total"]
    assert 0 < summary["1"] < summary["2"] < summary["1+4096"] < summary["2+4096"]
    assert summary["1+4096"] - summary["1"] > 5 * 512  # five clients' filters of 512 bytes each
    assert "## Query routing" in (run_dir / "report.md").read_text()
    assert metrics["answers"]["questions"] == 5 and (run_dir / "report.md").is_file()
    assert len(open_retriever(sorted((run_dir / "stores").iterdir())).clients) == 5
    assert main(["rag", "eval", str(config), "--set", "corpus.bogus=1"]) == 2
