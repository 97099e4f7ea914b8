"""The `fedcustom rag eval` configuration: frozen dataclasses with help text, read from TOML with
the same builder (unknown keys and bad values are one-line errors naming the key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedcustom.core import extras
from fedcustom.core.config import apply_overrides, build, check, opt, read_toml


@dataclass(frozen=True)
class EncoderConfig:
    name: str = opt("minilm", "sentence encoder every client shares: packaged name, local dir or hub id")
    max_length: int = opt(256, "tokens per passage or query after truncation")
    batch_size: int = opt(32, "passages per embedding forward pass")

    def __post_init__(self) -> None:
        check(self.max_length >= 8, "max_length", "an integer >= 8")
        check(self.batch_size >= 1, "batch_size", "an integer >= 1")


@dataclass(frozen=True)
class StoreConfig:
    chunk_size: int = opt(150, "words per passage")
    chunk_overlap: int = opt(25, "words shared by consecutive passages of one document")

    def __post_init__(self) -> None:
        check(self.chunk_size >= 1, "chunk_size", "an integer >= 1")
        check(0 <= self.chunk_overlap < self.chunk_size, "chunk_overlap", "an integer in [0, chunk_size)")


@dataclass(frozen=True)
class CorpusConfig:
    dataset: Literal["bbc-news"] = opt("bbc-news", "document collection with headlines and topics")
    documents_per_topic: int = opt(100, "articles per topic split over the clients' stores (0: all)")
    retrieval_queries: int = opt(200, "indexed articles whose headline is a find-the-article query")
    topic_questions: int = opt(60, "held-out headlines asked 'which topic?' with and without retrieval")
    queries: Literal["headline", "sentence"] = opt(
        "headline", "find-the-article query: the headline (the whole body is indexed), or a sentence "
                    "from the body after its first passage (only that passage, store.chunk_size words, "
                    "is indexed: a harder task)")

    def __post_init__(self) -> None:
        check(self.documents_per_topic >= 0, "documents_per_topic", "an integer >= 0")
        check(self.retrieval_queries >= 1, "retrieval_queries", "an integer >= 1")
        check(self.topic_questions >= 0, "topic_questions", "an integer >= 0")


@dataclass(frozen=True)
class SplitConfig:
    num_clients: int = opt(5, "clients, each with its own store")
    topics_per_client: int = opt(1, "topics each client holds (flwr-datasets PathologicalPartitioner, "
                                    "deterministic: client i holds topics i, i+1, ...); 0: iid")

    def __post_init__(self) -> None:
        check(self.num_clients >= 1, "num_clients", "an integer >= 1")
        check(self.topics_per_client >= 0, "topics_per_client", "an integer >= 0")


@dataclass(frozen=True)
class RetrievalConfig:
    k: int = opt(5, "passages the server keeps per query")
    limited_k: int = opt(2, "a smaller per-client k, evaluated as the privacy-limited variant")
    rrf_k: int = opt(60, "reciprocal rank fusion constant: fused = 1 / (rrf_k + rank)")

    def __post_init__(self) -> None:
        check(self.k >= 1, "k", "an integer >= 1")
        check(self.limited_k >= 1, "limited_k", "an integer >= 1")
        check(self.rrf_k >= 0, "rrf_k", "an integer >= 0")


@dataclass(frozen=True)
class RoutingConfig:
    clients_per_query: tuple[int, ...] = opt(
        (), "query routing: numbers of clients a query is sent to, each evaluated as a variant of exact "
            "federated retrieval (the clients whose centroids are nearest the query); empty: no routing")
    centroids: tuple[int, ...] = opt(
        (4,), "k-means centroids of its passage vectors each client publishes once for routing; several: "
              "each is evaluated (choose on the validation queries)")
    term_weights: tuple[float, ...] = opt(
        (0.0,), "weight of the lexical score (client-level IDF of the query's words found in a client's "
                "Bloom filter of its passages' words) added to the centroid cosine; 0: centroids alone; "
                "several: each is evaluated (choose on the validation queries)")
    term_bits: int = opt(65536, "bits of each client's word filter (published when a term weight is > 0)")
    validation_queries: int = opt(
        500, "queries on stored articles that are not query articles, asked like the evaluation's: "
             "routing variants are scored on them too, to choose a setting without the test queries")

    def __post_init__(self) -> None:
        check(all(n >= 1 for n in self.clients_per_query), "clients_per_query", "integers >= 1")
        check(bool(self.centroids) and all(c >= 1 for c in self.centroids), "centroids",
              "a non-empty list of integers >= 1")
        check(all(w >= 0 for w in self.term_weights) and bool(self.term_weights), "term_weights",
              "a non-empty list of numbers >= 0")
        check(self.term_bits >= 8 and self.term_bits % 8 == 0, "term_bits", "a positive multiple of 8")
        check(self.validation_queries >= 1, "validation_queries", "an integer >= 1")


@dataclass(frozen=True)
class GeneratorConfig:
    name: str = opt("smollm2", "causal LM that answers: packaged name, local dir or hub id")
    adapter: str = opt("", "optional PEFT adapter directory (e.g. one a fedcustom run saved)")
    max_new_tokens: int = opt(5, "tokens generated per answer (greedy)")
    context_passages: int = opt(3, "merged passages put into the prompt")
    passage_words: int = opt(60, "words of each passage shown in the prompt")
    answer_prefix: str = opt("Topic:", "text the answer starts with (a prefill, so a few tokens reach the "
                                       "topic word instead of a preamble)")

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1")
        check(self.context_passages >= 1, "context_passages", "an integer >= 1")
        check(self.passage_words >= 1, "passage_words", "an integer >= 1")


@dataclass(frozen=True)
class TuningConfig:
    rounds: int = opt(0, "federated rounds of query-encoder tuning (0: no tuning); the local-only and "
                         "centralized baselines train for the same rounds x local_epochs")
    fraction_fit: float = opt(1.0, "share of clients sampled to train each round")
    local_epochs: int = opt(1, "passes over its own (sentence, passage) pairs a client makes per round")
    batch_size: int = opt(32, "pairs per step; the other pairs' passages are a query's negatives")
    lr: float = opt(5e-4, "AdamW learning rate of the LoRA matrices")
    rank: int = opt(8, "LoRA rank of each adapted layer of the query encoder")
    target_modules: tuple[str, ...] = opt(
        ("query", "key", "value", "output.dense", "intermediate.dense"),
        "linear layers of the query encoder that get LoRA, by name suffix (default: every linear layer "
        "of the transformer blocks; the pooler, which mean pooling never uses, stays out)")
    alpha: float = opt(16.0, "LoRA scaling numerator: updates are scaled by alpha / rank")
    temperature: float = opt(0.05, "InfoNCE temperature: cosine similarities are divided by it")
    pairs_per_document: int = opt(2, "training sentences a client draws from each article it holds "
                                     "(the evaluation's query articles excluded)")
    hard_negatives: bool = opt(True, "add, as a negative of each pair, the passage of the client's own "
                                     "index most similar to its positive")

    def __post_init__(self) -> None:
        check(self.rounds >= 0, "rounds", "an integer >= 0")
        check(0 < self.fraction_fit <= 1, "fraction_fit", "a number in (0, 1]")
        check(self.local_epochs >= 1, "local_epochs", "an integer >= 1")
        check(self.batch_size >= 2, "batch_size", "an integer >= 2 (in-batch negatives)")
        check(self.lr > 0, "lr", "a number > 0")
        check(self.rank >= 1, "rank", "an integer >= 1")
        check(self.alpha > 0, "alpha", "a number > 0")
        check(self.temperature > 0, "temperature", "a number > 0")
        check(self.pairs_per_document >= 1, "pairs_per_document", "an integer >= 1")
        check(bool(self.target_modules) and all(self.target_modules), "target_modules",
              "a non-empty list of module names")


@dataclass(frozen=True)
class RagConfig:
    name: str = opt("rag", "run name; the results folder is OUTPUT_DIR/NAME-YYYYmmdd-HHMMSS")
    seed: int = opt(0, "seed of the document sample, the split and the queries")
    output_dir: str = opt("runs", "folder that receives the results folder")
    threads: int = opt(1, "torch CPU threads (0: all cores)")
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)

    def __post_init__(self) -> None:
        check(self.threads >= 0, "threads", "an integer >= 0")
        check(self.tuning.rounds == 0 or self.corpus.queries == "sentence", "tuning.rounds",
              "0 unless corpus.queries = 'sentence' (the training pairs are sentences and first passages)")
        check(bool(self.name) and "/" not in self.name, "name", "a non-empty name without '/'")
        check(all(n <= self.split.num_clients for n in self.routing.clients_per_query),
              "routing.clients_per_query", f"integers <= split.num_clients ({self.split.num_clients})")
        extras.check(("faiss",), "fedcustom rag")  # every client's store is a FAISS index


def load_rag_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RagConfig:
    raw = read_toml(path) if path is not None else {}
    return build(RagConfig, apply_overrides(raw, list(overrides or [])))
