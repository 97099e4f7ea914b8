"""`fedcustom rag eval`: federated vs centralized retrieval on BBC news split by topic, and topic
answers with and without the merged passages. Writes metrics.json, report.md, questions.jsonl,
the resolved config and every client's store to a new results folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
import torch

from fedcustom.core.config import to_dict
from fedcustom.core.io import atomic_write, new_run_dir
from fedcustom.rag.config import RagConfig
from fedcustom.rag.corpus import Corpus, build_corpus
from fedcustom.rag.evaluate import evaluate_answers, evaluate_retrieval, passage_keys
from fedcustom.rag.federation import (
    FederatedRetriever,
    Hit,
    RagClient,
    centralized_store,
    pack,
    passage_record,
    publish_summaries,
)
from fedcustom.rag.generate import Generator
from fedcustom.rag.routing import SummaryRouter
from fedcustom.rag.store import Encoder, LocalStore, load_encoder
from fedcustom.rag.tuning import tuning_study

EXACT = "federated exact (score), two phases"


def retrievers(clients: list[RagClient], central: RagClient, cfg: RagConfig) -> dict[str, FederatedRetriever]:
    """The variants compared: the centralized index and four ways to federate it."""
    r = cfg.retrieval
    return {
        "centralized": FederatedRetriever([central], r.k, two_phase=False),
        "federated exact (score), one phase": FederatedRetriever(clients, r.k, merge="score",
                                                                  two_phase=False),
        EXACT: FederatedRetriever(clients, r.k, merge="score"),
        f"federated score, two phases, k_c = {r.limited_k}": FederatedRetriever(
            clients, r.k, per_client_k=r.limited_k, merge="score"),
        "federated RRF, two phases": FederatedRetriever(clients, r.k, merge="rrf", rrf_k=r.rrf_k),
    }


def routing_study(clients: list[RagClient], encoder: Encoder, corpus: Corpus, cfg: RagConfig,
                  reference: dict[str, list[Hit]], log: Callable[[str], None]) -> dict[str, Any]:
    """Exact federated retrieval over only the routed clients, for every (centroids, clients per
    query) setting, on the test queries and on validation queries (to choose a setting by)."""
    k, ro = cfg.retrieval.k, cfg.routing
    validation = corpus.validation_queries(ro.validation_queries, cfg.seed)
    exact = FederatedRetriever(clients, k, merge="score")
    out: dict[str, Any] = {"validation_queries": len(validation), "summary_bytes_total": {}, "variants": [],
                           "exact_validation": evaluate_retrieval(exact, validation, None, k)[0]}
    for count in ro.centroids:
        for weight in ro.term_weights:
            bits = ro.term_bits if weight else 0
            summaries, summary_bytes = publish_summaries(clients, count, cfg.seed, bits)
            out["summary_bytes_total"][summary_key(count, bits)] = summary_bytes
            for n in ro.clients_per_query:
                router = SummaryRouter(summaries, n, encoder, weight)
                routed = FederatedRetriever(clients, k, merge="score", router=router)
                test = evaluate_retrieval(routed, corpus.queries, reference, k)[0]
                val = evaluate_retrieval(routed, validation, None, k)[0]
                out["variants"].append({"centroids": count, "term_weight": weight, "term_bits": bits,
                                        "clients_per_query": n, "test": test, "validation": val})
                log(f"routing: {count} centroids, term weight {weight}, {n} clients: test "
                    f"recall@{k} {test[f'recall@{k}']:.3f}, validation {val[f'recall@{k}']:.3f}")
    return out


def summary_key(centroids: int, term_bits: int) -> str:
    """The key of a summary's bytes in metrics.json: "16" (centroids alone), "16+65536" (with terms)."""
    return f"{centroids}+{term_bits}" if term_bits else str(centroids)


def run_rag_experiment(cfg: RagConfig, log: Callable[[str], None] = print) -> Path:
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    start, cpu_start = time.perf_counter(), time.process_time()
    c, g = cfg.corpus, cfg.generator
    # Everything that can fail on bad input (corpus sizes, model names) fails before the results
    # folder exists and before minutes of indexing.
    corpus = build_corpus(c.documents_per_topic, c.retrieval_queries, c.topic_questions,
                          cfg.split.num_clients, cfg.split.topics_per_client, cfg.seed, c.queries,
                          cfg.store.chunk_size)
    encoder = load_encoder(cfg.encoder.name, cfg.encoder.max_length, cfg.encoder.batch_size)
    generator = Generator(g.name, g.adapter, g.max_new_tokens, g.passage_words,
                          g.answer_prefix) if corpus.topic_questions else None
    run_dir = new_run_dir(cfg.output_dir, cfg.name)
    atomic_write(run_dir / "config.toml", tomli_w.dumps(to_dict(cfg)))
    timings: dict[str, float] = {"load_seconds": time.perf_counter() - start}

    tick = time.perf_counter()
    stores = []
    for i, docs in enumerate(corpus.clients):
        store = LocalStore(encoder, cfg.store.chunk_size, cfg.store.chunk_overlap)
        store.add(a.document(corpus.topic_names, corpus.lead_words) for a in docs)
        store.save(run_dir / "stores" / f"client-{i}")
        stores.append(store)
        log(f"client {i}: {len(docs)} articles, {len(store)} passages, topics "
            f"{sorted({corpus.topic_names[a.topic] for a in docs})}")
    timings["index_seconds"] = time.perf_counter() - tick
    central = centralized_store(stores)
    clients = [RagClient(s) for s in stores]

    tick = time.perf_counter()
    retrieval: dict[str, dict[str, float]] = {}
    reference = None
    for name, retriever in retrievers(clients, RagClient(central), cfg).items():
        metrics, results = evaluate_retrieval(retriever, corpus.queries, reference, cfg.retrieval.k)
        reference = reference or results  # the first variant is the centralized index
        retrieval[name] = metrics
        log(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    timings["retrieval_seconds"] = time.perf_counter() - tick
    routing: dict[str, Any] = {}
    if cfg.routing.clients_per_query:
        tick = time.perf_counter()
        routing = routing_study(clients, encoder, corpus, cfg, reference or {}, log)
        timings["routing_seconds"] = time.perf_counter() - tick

    tuning: dict[str, Any] = {}
    if cfg.tuning.rounds:
        tick = time.perf_counter()
        tuning = tuning_study(stores, corpus, cfg, log)
        timings["tuning_seconds"] = time.perf_counter() - tick

    answers: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if generator is not None:
        tick = time.perf_counter()
        exact = FederatedRetriever(clients, cfg.retrieval.k, merge="score")
        answers, rows = evaluate_answers(generator, corpus.topic_questions, corpus.topic_names,
                                         lambda q: exact.retrieve(q)[0], g.context_passages, log)
        centralized = FederatedRetriever([RagClient(central)], cfg.retrieval.k, two_phase=False)
        answers["contexts_identical_to_centralized"] = sum(
            passage_keys(exact.retrieve(a.headline)[0][:g.context_passages])
            == passage_keys(centralized.retrieve(a.headline)[0][:g.context_passages])
            for a in corpus.topic_questions) / len(corpus.topic_questions)
        timings["answer_seconds"] = time.perf_counter() - tick
    timings["total_seconds"] = time.perf_counter() - start
    # CPU time is what the run costs on an idle core; wall time also counts waiting for a busy one.
    timings["cpu_seconds"] = time.process_time() - cpu_start
    summary = {
        "clients": [{"articles": len(docs), "passages": len(s),
                     "topics": sorted({corpus.topic_names[a.topic] for a in docs})}
                    for docs, s in zip(corpus.clients, stores, strict=True)],
        "passages_total": len(central), "retrieval_queries": len(corpus.retrieval_queries),
        # What a centralized index costs instead: every client uploads every passage once.
        "centralized_upload_bytes": sum(len(pack(passage_record(p))) for p in central.passages),
        "retrieval": retrieval, "routing": routing, "tuning": tuning, "answers": answers, "timings": timings,
        "threads": torch.get_num_threads(),
    }
    atomic_write(run_dir / "questions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write(run_dir / "metrics.json", json.dumps(summary, indent=2))
    atomic_write(run_dir / "report.md", render_report(cfg, summary))
    log(f"results: {run_dir} ({timings['total_seconds']:.0f} s)")
    return run_dir


def render_report(cfg: RagConfig, s: dict[str, Any]) -> str:
    k = cfg.retrieval.k
    lines = [f"# Federated RAG: {cfg.name}", "",
             f"{len(s['clients'])} clients, each with its own FAISS index ({cfg.encoder.name} embeddings); "
             f"{s['passages_total']} passages in all. Clients (articles / passages / topics):", ""]
    lines += [f"- client {i}: {c['articles']} / {c['passages']} / {', '.join(c['topics'])}"
              for i, c in enumerate(s["clients"])]
    query = "a headline" if cfg.corpus.queries == "headline" else "a sentence from later in its body"
    lines += ["", f"## Retrieval: find the article for {query} ({s['retrieval_queries']} queries)", "",
              f"| variant | recall@{k} | MRR@{k} | agreement@{k} with centralized | bytes/query (down + up) "
              "| passages sent/query |", "|---|---|---|---|---|---|"]
    for name, m in s["retrieval"].items():
        agree = m.get(f"agreement@{k}_with_centralized")
        sent = "-" if name == "centralized" else f"{m['passages_sent_per_query']:.1f}"
        traffic = "n/a (index holds all passages)" if name == "centralized" else (
            f"{m['bytes_per_query']:.0f} ({m['bytes_down_per_query']:.0f} + {m['bytes_up_per_query']:.0f})")
        lines.append(f"| {name} | {m[f'recall@{k}']:.3f} | {m[f'mrr@{k}']:.3f} | "
                     f"{'-' if agree is None else f'{agree:.3f}'} | {traffic} | "
                     f"{sent} |")
    lines += ["", f"A centralized index instead needs every passage uploaded once: "
              f"{s['centralized_upload_bytes']:,} bytes.", ""]
    if s.get("routing"):
        lines += render_routing(cfg, s)
    if s["tuning"]:
        lines += render_tuning(cfg, s["tuning"])
    a = s["answers"]
    if a:
        lines += [f"## Answers: 'which topic is this news about?' ({a['questions']} held-out headlines)", "",
                  f"Generator {cfg.generator.name}, greedy, {cfg.generator.max_new_tokens} new tokens "
                  f"after the prefill {cfg.generator.answer_prefix!r}; "
                  f"with retrieval the top {cfg.generator.context_passages} passages of the exact federated "
                  f"merge are in the prompt (identical to the centralized index's top "
                  f"{cfg.generator.context_passages} for {a['contexts_identical_to_centralized']:.0%} of the "
                  "questions).", "",
                  "Generated: the greedy answer names exactly the right topic. Choice: the topic word "
                  "the model gives the highest likelihood as its answer (format-independent).", "",
                  "| | generated answer accuracy | choice accuracy |", "|---|---|---|",
                  f"| without retrieval | {a['accuracy_without_retrieval']:.3f} | "
                  f"{a['choice_accuracy_without_retrieval']:.3f} |",
                  f"| with federated retrieval | {a['accuracy_with_retrieval']:.3f} | "
                  f"{a['choice_accuracy_with_retrieval']:.3f} |",
                  "| majority topic of the retrieved passages (no generator) | "
                  f"{a['context_vote_accuracy']:.3f} | |",
                  f"| chance | {a['chance']:.3f} | {a['chance']:.3f} |", ""]
    t = s["timings"]
    lines += ["## Time", "", f"{s['threads']} thread(s), wall time: " + ", ".join(
        f"{key.removesuffix('_seconds')} {value:.0f} s" for key, value in t.items() if key != "cpu_seconds")
        + f"; CPU time of the whole run: {t['cpu_seconds']:.0f} s", ""]
    return "\n".join(lines)


def render_routing(cfg: RagConfig, s: dict[str, Any]) -> list[str]:
    k, clients, r = cfg.retrieval.k, len(s["clients"]), s["routing"]
    exact, exact_val = s["retrieval"][EXACT], r["exact_validation"]
    recall = f"recall@{k}"
    lines = ["## Query routing", "",
             "Each client publishes once the k-means centroids of its passage vectors (float16) and, "
             "where the term weight is > 0, a Bloom filter of its passages' words; the server scores "
             "each client by the cosine of the query with its nearest centroid plus term weight x the "
             "client-level IDF of the query's words its filter holds, asks only the best-scored "
             "clients, then merges their replies exactly. Share: recall of the routed "
             f"retrieval over that of exact federated retrieval ({exact[recall]:.3f} on the test "
             f"queries, {exact_val[recall]:.3f} on {r['validation_queries']} validation queries: "
             "stored articles that are not query articles, asked the same way; choose a setting on "
             "these).", "",
             "| centroids per client | term weight | summary bytes, all clients, once | clients asked "
             f"| validation share | test {recall} | test share | agreement@{k} with centralized "
             "| bytes/query |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| - | - | 0 | {clients} (exact) | 100% | {exact[recall]:.3f} | 100% | "
             f"{exact[f'agreement@{k}_with_centralized']:.3f} | {exact['bytes_per_query']:.0f} |"]
    for v in r["variants"]:
        t, val, n = v["test"], v["validation"], v["clients_per_query"]
        summary = r["summary_bytes_total"][summary_key(v["centroids"], v.get("term_bits", 0))]
        lines.append(f"| {v['centroids']} | {v.get('term_weight', 0)} | {summary:,} | "
                     f"{n} ({n / clients:.0%}) | "
                     f"{share(val[recall], exact_val[recall])} | {t[recall]:.3f} | "
                     f"{share(t[recall], exact[recall])} | {t[f'agreement@{k}_with_centralized']:.3f} | "
                     f"{t['bytes_per_query']:.0f} |")
    return lines + [""]


def share(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def render_tuning(cfg: RagConfig, t: dict[str, Any]) -> list[str]:
    k, tc = cfg.retrieval.k, cfg.tuning
    gains = t[f"recall@{k}_gain_over_frozen"]
    unchanged = ("verified: identical bytes before and after" if t["document_vectors_unchanged"]
                 else "NOT: the vectors changed")
    lines = ["## Federated retriever tuning", "",
             f"LoRA (rank {tc.rank}) on the query encoder's {', '.join(tc.target_modules)} layers, in-batch "
             f"InfoNCE (temperature {tc.temperature}) against the frozen passage vectors of the client's own "
             f"index{' plus one hard negative per pair' if tc.hard_negatives else ''}; "
             f"{tc.rounds} rounds x {tc.local_epochs} local epoch(s), {tc.fraction_fit:.0%} of the "
             f"clients per round, lr {tc.lr}, batch {tc.batch_size}. Training pairs per client "
             f"({tc.pairs_per_document} sentences per article, query articles held out): "
             f"{', '.join(map(str, t['pairs_per_client']))}. The document encoder stays frozen: every index "
             f"is unchanged ({unchanged}); each client embeds queries with the tuned tower. "
             f"{t['trainable_parameters']:,} trainable parameters, "
             f"{t['bytes_per_client_per_round']['up']:,} bytes up and down per client per round.", "",
             f"| query encoder | recall@1 | recall@{k} | MRR@{k} | recall@{k} gain over frozen (95% CI) |",
             "|---|---|---|---|---|"]
    for name, m in t["variants"].items():
        g = gains.get(name)
        gain = f"{g['gain']:+.3f} ({g['low']:+.3f}, {g['high']:+.3f})" if g else "-"
        if name.startswith("local"):
            gain = f"clients {m[f'recall@{k}_min']:.3f} .. {m[f'recall@{k}_max']:.3f}"
        lines.append(f"| {name} | {m['recall@1']:.3f} | {m[f'recall@{k}']:.3f} | {m[f'mrr@{k}']:.3f} "
                     f"| {gain} |")
    lines += ["", f"Federated rounds (round 0: the frozen encoder): recall@{k} " + ", ".join(
        f"{r[f'recall@{k}']:.3f}" for r in t["curves"]["federated"]), ""]
    return lines
