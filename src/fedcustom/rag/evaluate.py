"""Retrieval and answer metrics: recall@k and MRR against known answers, agreement with a
centralized index, bytes per query, and topic-answer accuracy with and without retrieval."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedcustom.rag.corpus import Article, Query
from fedcustom.rag.federation import FederatedRetriever, Hit
from fedcustom.rag.generate import Generator


def recall_at_k(ranked: Sequence[str], relevant: str, k: int) -> float:
    return float(relevant in ranked[:k])


def reciprocal_rank(ranked: Sequence[str], relevant: str, k: int) -> float:
    """1 / rank of the first passage from the relevant document within the top k, else 0."""
    return next((1.0 / (r + 1) for r, doc in enumerate(ranked[:k]) if doc == relevant), 0.0)


def passage_keys(hits: Sequence[Hit]) -> list[tuple[str, str]]:
    """A passage's identity across indexes: its document and text (ids differ per store)."""
    return [(h.doc_id, h.text) for h in hits]


def agreement(hits: Sequence[Hit], reference: Sequence[Hit]) -> float:
    """Share of the reference (centralized) top-k that the federated top-k also returned."""
    if not reference:
        return 1.0
    return len(set(passage_keys(hits)) & set(passage_keys(reference))) / len(reference)


def evaluate_retrieval(retriever: FederatedRetriever, queries: Sequence[Query],
                       reference: dict[str, list[Hit]] | None,
                       k: int) -> tuple[dict[str, float], dict[str, list[Hit]]]:
    """Find-the-article: each query (a headline, or a sentence) has one relevant document, its
    article. The results are keyed by that article's id."""
    recall, rr, agree, down, up, sent, asked = [], [], [], [], [], [], []
    results: dict[str, list[Hit]] = {}
    for query in queries:
        hits, traffic = retriever.retrieve(query.text)
        results[query.doc_id] = hits
        ranked = [h.doc_id for h in hits]
        recall.append(recall_at_k(ranked, query.doc_id, k))
        rr.append(reciprocal_rank(ranked, query.doc_id, k))
        if reference is not None:
            agree.append(agreement(hits, reference[query.doc_id]))
        down.append(traffic.down)
        up.append(traffic.up)
        sent.append(traffic.passages_sent)
        asked.append(traffic.clients_queried)
    metrics = {f"recall@{k}": mean(recall), f"mrr@{k}": mean(rr),
               "bytes_down_per_query": mean(down), "bytes_up_per_query": mean(up),
               "bytes_per_query": mean(down) + mean(up), "passages_sent_per_query": mean(sent),
               "clients_queried_per_query": mean(asked)}
    if agree:
        metrics[f"agreement@{k}_with_centralized"] = mean(agree)
    return metrics, results


def parse_topic(answer: str, topic_names: Sequence[str]) -> int | None:
    """The one topic the answer names; None if it names none or several (a model that lists the
    options has not answered, and must not score on whichever option it listed first)."""
    text = answer.lower()
    found = [t for t, name in enumerate(topic_names) if name.lower() in text]
    return found[0] if len(found) == 1 else None


def topic_question(headline: str, topic_names: Sequence[str]) -> str:
    options = ", ".join(topic_names[:-1]) + f" or {topic_names[-1]}"
    return f"Which topic is this news about: {headline}? Answer with one word: {options}."


def evaluate_answers(generator: Generator, questions: Sequence[Article], topic_names: Sequence[str],
                     retrieve: Callable[[str], list[Hit]], context_passages: int,
                     log: Callable[[str], None] = print) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Topic answers without context and with the merged passages; also the passages' own vote."""
    rows, start = [], time.perf_counter()
    for n, article in enumerate(questions, 1):
        question = topic_question(article.headline, topic_names)
        hits = retrieve(article.headline)[:context_passages]
        plain, with_context = generator.answer(question), generator.answer(question, hits)
        choices = [topic_names[generator.choose(question, topic_names, h)] for h in ((), hits)]
        votes = Counter(h.meta.get("topic", "") for h in hits).most_common(1)
        rows.append({"doc_id": article.doc_id, "headline": article.headline,
                     "gold": topic_names[article.topic],
                     "answer_without_retrieval": plain, "answer_with_retrieval": with_context,
                     "choice_without_retrieval": choices[0], "choice_with_retrieval": choices[1],
                     "context_topics": [h.meta.get("topic", "") for h in hits],
                     "context_vote": votes[0][0] if votes else ""})
        if n % 10 == 0:
            log(f"  {n}/{len(questions)} questions, {time.perf_counter() - start:.0f} s")

    def accuracy(key: str) -> float:
        gold = [topic_names.index(r["gold"]) for r in rows]
        return mean([float(parse_topic(r[key], topic_names) == g) for r, g in zip(rows, gold, strict=True)])

    metrics = {"questions": len(rows), "accuracy_without_retrieval": accuracy("answer_without_retrieval"),
               "accuracy_with_retrieval": accuracy("answer_with_retrieval"),
               "choice_accuracy_without_retrieval": mean([float(r["choice_without_retrieval"] == r["gold"])
                                                          for r in rows]),
               "choice_accuracy_with_retrieval": mean([float(r["choice_with_retrieval"] == r["gold"])
                                                       for r in rows]),
               "context_vote_accuracy": mean([float(r["context_vote"] == r["gold"]) for r in rows]),
               "chance": 1.0 / len(topic_names), "seconds": time.perf_counter() - start}
    return metrics, rows


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
