"""Federated retriever tuning: clients tune the query encoder on their own (sentence, passage)
pairs with LoRA and an in-batch contrastive loss, and FedAvg merges the LoRA matrices.

The dual encoder is asymmetric. Documents are embedded once, by the frozen encoder that built
every client's index; only the query tower (a second copy of the same model) gets LoRA. So every
index stays valid through and after tuning and nothing is re-embedded: a client's training
targets are its own index's vectors, and after the last round it embeds incoming queries with the
global query tower (RagClient's query_encoder). What travels each round is the LoRA state.

Rounds run through fedcustom's own federation: the shared training loop (methods.training), the
round loop and its simulation engine (federation.rounds, engines.simulation), FedAvg, and the
local-only loop (federation.local). The method is LoRA with a contrastive loss; it is not in the
method registry because it trains a query tower over a retrieval index, which no classification
or generation task of `fedcustom run` provides.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcustom.core.config import TrainConfig, check, opt
from fedcustom.core.payload import serialize
from fedcustom.core.types import State
from fedcustom.data.batching import Batch, Encoded, encode
from fedcustom.engines.simulation import SimulationEngine
from fedcustom.federation.local import train_alone
from fedcustom.federation.rounds import Clients, Job
from fedcustom.methods.lora import Lora, LoraOptions
from fedcustom.rag.config import RagConfig, TuningConfig
from fedcustom.rag.corpus import Corpus, Query
from fedcustom.rag.evaluate import evaluate_retrieval
from fedcustom.rag.federation import FederatedRetriever, Hit, RagClient
from fedcustom.rag.store import Encoder, LocalStore, load_model, mean_pool
from fedcustom.strategies.fedavg import FedAvg, FedAvgOptions


def contrastive_loss(queries: torch.Tensor, passages: torch.Tensor, labels: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: query i's positive is passage i, every other passage a
    negative (the batch's other positives, then any extra rows: hard negatives), except a copy of
    its own positive (two sentences of one article in a batch), which is masked out rather than
    pushed away. `labels` names every passage row (a passage id). Rows are L2-normalized
    embeddings, so the logits are cosine similarities / temperature."""
    n = len(queries)
    logits = queries @ passages.T / temperature
    twin = labels[:n, None] == labels[None, :]
    twin[torch.arange(n), torch.arange(n)] = False
    logits = logits.masked_fill(twin, float("-inf"))
    return F.cross_entropy(logits, torch.arange(n, device=logits.device))


class QueryTower(nn.Module):
    """The trainable query encoder beside the frozen passage vectors its pairs point to and, per
    passage, its hard negative: the most similar other passage of the same client's index (-1:
    none). Both are buffers: never trained, never exchanged. In a simulation the clients share one
    tower; a client's pairs and their hard negatives point only at its own passages, and its
    batches hold only its own pairs."""

    peft_task_type = "FEATURE_EXTRACTION"  # read by the LoRA method when it wraps `encoder`

    def __init__(self, encoder: nn.Module, passages: torch.Tensor, neighbours: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("passages", passages, persistent=False)
        self.register_buffer("neighbours", neighbours, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


@dataclass(frozen=True)
class RetrieverLoraOptions(LoraOptions):
    temperature: float = opt(0.05, "InfoNCE temperature")
    hard_negatives: bool = opt(True, "add each positive's nearest other passage as a negative")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.temperature > 0, "temperature", "a number > 0")


class RetrieverLora(Lora):
    """LoRA on the query tower; a batch's labels are its pairs' rows of the tower's passages. With
    hard_negatives, each positive's neighbour joins the batch's negatives."""

    name = "retriever-lora"
    summary = "LoRA on a retrieval query encoder, in-batch contrastive loss against frozen passages"
    Options = RetrieverLoraOptions
    options: RetrieverLoraOptions

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        assert isinstance(model, QueryTower)
        queries = model(batch.input_ids, batch.attention_mask)
        labels = batch.labels
        if self.options.hard_negatives:
            hard = model.neighbours[labels]
            labels = torch.cat([labels, hard[hard >= 0]])
        return contrastive_loss(queries, model.passages[labels], labels, self.options.temperature)


@dataclass
class Tuner:
    """Everything the three tuned variants share: the tower, its method, the pairs as token rows
    (labels: passage rows), each client's rows, and the evaluation query encoder."""

    tower: QueryTower
    method: RetrieverLora
    data: Encoded
    rows: list[np.ndarray]
    train: TrainConfig
    initial: State
    query_encoder: Encoder  # wraps tower.encoder: the tuned weights, whatever state is loaded
    seed: int

    def clients(self, pooled: bool = False) -> Clients:
        rows = [np.concatenate(self.rows)] if pooled else self.rows
        return Clients(self.tower, self.method, self.data, rows, self.train, self.seed)


def build_tuner(stores: list[LocalStore], pairs: list[list[Query]], encoder_name: str, max_length: int,
                batch_size: int, cfg: TuningConfig, seed: int) -> Tuner:
    """A query tower (its own copy of the encoder: LoRA is injected in place and must not touch
    the document encoder) over the stores' own vectors, and each client's pairs as rows."""
    rows_of: dict[str, int] = {}
    vectors, neighbours = [], []
    for store in stores:  # the passage rows: every store's vectors, in client order
        first = len(rows_of)
        rows_of.update({p.doc_id: first + i for i, p in enumerate(store.passages)})
        vectors.append(store.vectors())
        similar = vectors[-1] @ vectors[-1].T
        np.fill_diagonal(similar, -np.inf)
        neighbours.append(first + similar.argmax(1) if len(similar) > 1 else np.full(len(similar), -1))
    model, tokenizer = load_model(encoder_name)
    torch.manual_seed(seed)  # LoRA's A matrices start random: the same seed, the same start
    method = RetrieverLora(RetrieverLoraOptions(rank=cfg.rank, alpha=cfg.alpha, temperature=cfg.temperature,
                                                hard_negatives=cfg.hard_negatives,
                                                target_modules=cfg.target_modules))
    tower = method.prepare(QueryTower(model, torch.from_numpy(np.concatenate(vectors)),
                                      torch.from_numpy(np.concatenate(neighbours)).long()))
    assert isinstance(tower, QueryTower)
    texts = [q.text for client in pairs for q in client]
    data = encode(texts, [rows_of[q.doc_id] for client in pairs for q in client], tokenizer, max_length)
    bounds = np.cumsum([0] + [len(client) for client in pairs])
    rows = [np.arange(bounds[c], bounds[c + 1]) for c in range(len(pairs))]
    train = TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size, local_epochs=cfg.local_epochs)
    query_encoder = Encoder(f"{encoder_name}+lora", max_length, batch_size, tower.encoder, tokenizer)
    return Tuner(tower, method, data, rows, train, method.get_state(tower), query_encoder, seed)


Evaluate = Callable[[Encoder], dict[str, float]]


def run_federated(tuner: Tuner, cfg: TuningConfig, evaluate: Evaluate,
                  pooled: bool = False) -> tuple[State, list[dict[str, Any]]]:
    """FedAvg over the clients for cfg.rounds rounds (pooled: the centralized baseline, one client
    holding every pair, for the same rounds x local epochs). Returns the final LoRA state and the
    per-round records, each with the query encoder's retrieval metrics after that round."""
    records: list[dict[str, Any]] = []

    def on_round(record: dict[str, Any], state: State) -> None:
        records.append({k: v for k, v in record.items() if k in CURVE_KEYS or "@" in k})

    job = Job(tuner.clients(pooled), FedAvg(FedAvgOptions()), cfg.rounds, 1.0 if pooled else cfg.fraction_fit,
              lambda model: evaluate(tuner.query_encoder), on_round,
              label="centralized" if pooled else "federated", initial_state=tuner.initial)
    return SimulationEngine().run(job), records


CURVE_KEYS = ("round", "train_loss", "clients", "bytes_down", "bytes_up", "client_seconds", "round_seconds")


def run_local(tuner: Tuner, cfg: TuningConfig, evaluate: Evaluate) -> dict[int, dict[str, Any]]:
    """Each client alone for the same rounds x local epochs: its metrics after the last round."""
    clients = tuner.clients()
    return {cid: train_alone(clients, cid, tuner.initial, cfg.rounds, lambda r: r == cfg.rounds,
                             lambda model: evaluate(tuner.query_encoder))[cfg.rounds]
            for cid in range(len(clients))}


def state_bytes(state: State) -> int:
    """What one client sends (and receives) per round: the serialized LoRA state."""
    return len(serialize(state))


def query_recalls(queries: list[Query], results: dict[str, list[Hit]], k: int) -> np.ndarray:
    """Per query: 1 if its article is in the top k, else 0."""
    return np.array([float(q.doc_id in [h.doc_id for h in results[q.doc_id][:k]]) for q in queries])


def paired_gain(before: np.ndarray, after: np.ndarray, seed: int, draws: int = 2000) -> dict[str, float]:
    """Mean per-query gain and its 95% paired bootstrap interval (queries resampled together)."""
    diff = after - before
    rng = np.random.default_rng([seed, 1729])
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"gain": float(diff.mean()), "low": float(low), "high": float(high),
            "queries_won": int((diff > 0).sum()), "queries_lost": int((diff < 0).sum())}


def tuning_study(stores: list[LocalStore], corpus: Corpus, cfg: RagConfig,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Frozen, federated, local-only and centralized query encoders on the corpus's queries, each
    answered by exact federated retrieval over every client's (unchanged) index."""
    t, k = cfg.tuning, cfg.retrieval.k
    fingerprint = [hashlib.sha256(s.vectors().tobytes()).hexdigest() for s in stores]
    pairs = [corpus.training_pairs(c, t.pairs_per_document, cfg.seed) for c in range(len(stores))]
    tuner = build_tuner(stores, pairs, cfg.encoder.name, cfg.encoder.max_length, cfg.encoder.batch_size,
                        t, cfg.seed)
    texts = [q.text for q in corpus.queries]
    last: dict[str, dict[str, list[Hit]]] = {}

    def evaluate(encoder: Encoder) -> dict[str, float]:
        encoder.remember_queries(texts)
        clients = [RagClient(s, query_encoder=encoder) for s in stores]
        metrics, last["hits"] = evaluate_retrieval(FederatedRetriever(clients, k), corpus.queries, None, k)
        recall_1 = query_recalls(corpus.queries, last["hits"], 1).mean()
        return {"recall@1": float(recall_1), f"recall@{k}": metrics[f"recall@{k}"],
                f"mrr@{k}": metrics[f"mrr@{k}"]}

    variants: dict[str, dict[str, Any]] = {}
    per_query: dict[str, np.ndarray] = {}
    clock = time.perf_counter()
    variants["frozen"] = evaluate(stores[0].encoder)
    per_query["frozen"] = query_recalls(corpus.queries, last["hits"], k)
    log(f"tuning: frozen {variants['frozen']}; {sum(map(len, pairs))} training pairs")
    curves = {}
    for name, pooled in (("federated", False), ("centralized", True)):
        clock = time.perf_counter()
        final, curves[name] = run_federated(tuner, t, evaluate, pooled)
        variants[name] = {**curves[name][-1], "seconds": time.perf_counter() - clock}
        per_query[name] = query_recalls(corpus.queries, last["hits"], k)
        log(f"tuning: {name} {variants[name]}")
    clock = time.perf_counter()
    local = run_local(tuner, t, evaluate)
    keys = ("recall@1", f"recall@{k}", f"mrr@{k}")
    variants["local-only (mean over clients)"] = {
        **{key: float(np.mean([m[key] for m in local.values()])) for key in keys},
        **{f"{key}_min": min(m[key] for m in local.values()) for key in keys},
        **{f"{key}_max": max(m[key] for m in local.values()) for key in keys},
        "seconds": time.perf_counter() - clock}
    log(f"tuning: local-only {variants['local-only (mean over clients)']}")
    unchanged = fingerprint == [hashlib.sha256(s.vectors().tobytes()).hexdigest() for s in stores]
    return {"variants": variants, "local_per_client": {str(c): m for c, m in local.items()},
            "curves": curves, "pairs_per_client": [len(p) for p in pairs],
            f"recall@{k}_gain_over_frozen": {name: paired_gain(per_query["frozen"], per_query[name], cfg.seed)
                                             for name in ("federated", "centralized")},
            "bytes_per_client_per_round": {"down": state_bytes(tuner.initial),
                                           "up": state_bytes(tuner.initial)},
            "trainable_parameters": sum(v.numel() for v in tuner.initial.values()),
            "document_vectors_unchanged": unchanged}
