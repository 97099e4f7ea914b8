"""`fedcustom rag`: federated retrieval-augmented generation (index, ask, eval)."""

from __future__ import annotations

import argparse
import json


def cmd_index(args: argparse.Namespace) -> None:
    from fedcustom.rag.ask import index_documents

    added, total = index_documents(args.store, args.docs, args.encoder, args.chunk_size, args.chunk_overlap)
    print(f"{args.store}: added {added} passages, {total} in all")


def cmd_ask(args: argparse.Namespace) -> None:
    import torch

    from fedcustom.rag.ask import ask, open_retriever
    from fedcustom.rag.generate import Generator

    torch.set_num_threads(args.threads)
    retriever = open_retriever(args.stores, args.k, args.per_client_k, args.merge,
                               two_phase=not args.one_phase, route=args.route, centroids=args.centroids,
                               term_weight=args.term_weight)
    generator = None if args.no_generate else Generator(args.generator, args.adapter, args.max_new_tokens,
                                                        args.passage_words, args.answer_prefix)
    result = ask(args.question, retriever, generator, args.context_passages, args.query)
    if args.json:
        print(json.dumps({"question": result.question, "answer": result.answer,
                          "passages": [vars(h) for h in result.passages], "traffic": vars(result.traffic)}))
        return
    for n, hit in enumerate(result.passages, 1):
        print(f"[{n}] client {hit.client}  score {hit.score:.4f}  {hit.doc_id}  {hit.text[:100]}")
    t = result.traffic
    print(f"bytes: {t.down} down, {t.up} up; passages sent: {t.passages_sent}; clients asked: "
          f"{t.clients_queried} of {len(retriever.clients)}")
    if generator is not None:
        print(f"answer: {result.answer}")


def cmd_eval(args: argparse.Namespace) -> None:
    from fedcustom.rag.config import load_rag_config
    from fedcustom.rag.experiment import run_rag_experiment

    run_rag_experiment(load_rag_config(args.config, args.set))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected an integer >= 1")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    rag = sub.add_parser("rag", help="federated retrieval-augmented generation: every client keeps its index")
    rag.set_defaults(needs=("faiss",))  # every client's store is a FAISS index (core.extras)
    rag_sub = rag.add_subparsers(dest="rag_command", required=True)

    index = rag_sub.add_parser("index", help="create a client's store from documents, or add to it")
    index.add_argument("store", help="store folder (created if missing; documents are added if it exists)")
    index.add_argument("--docs", required=True, help="a folder of .txt files or a .jsonl file (id, text)")
    index.add_argument("--encoder", help="sentence encoder of a new store (default: minilm); "
                                          "an existing store keeps its own")
    index.add_argument("--chunk-size", type=positive, default=150, help="words per passage (new store)")
    index.add_argument("--chunk-overlap", type=int, default=25, help="words shared by neighbours (new store)")
    index.set_defaults(func=cmd_index)

    ask = rag_sub.add_parser("ask", help="answer a question from the clients' stores")
    ask.add_argument("question")
    ask.add_argument("--query", default="", help="text to search for (default: the question itself)")
    ask.add_argument("--stores", nargs="+", required=True, metavar="DIR", help="one store folder per client")
    ask.add_argument("--k", type=positive, default=5, help="merged passages kept")
    ask.add_argument("--per-client-k", type=int, default=0, help="passages each client returns (0: k)")
    ask.add_argument("--merge", default="score", help="score (exact, one encoder) or rrf (rank fusion)")
    ask.add_argument("--one-phase", action="store_true",
                     help="clients send passage texts with their scores (default: only the winners' texts)")
    ask.add_argument("--route", type=int, default=0, metavar="N",
                     help="ask only the N clients whose published summaries score best (0: all)")
    ask.add_argument("--centroids", type=positive, default=64,
                     help="k-means centroids each client publishes for --route")
    ask.add_argument("--term-weight", type=float, default=0.1,
                     help="weight of the clients' word filters in --route's score (0: centroids alone)")
    ask.add_argument("--generator", default="smollm2", help="causal LM: packaged name, local dir or hub id")
    ask.add_argument("--adapter", default="", help="PEFT adapter folder for the generator")
    ask.add_argument("--max-new-tokens", type=positive, default=64)
    ask.add_argument("--context-passages", type=positive, default=3, help="merged passages in the prompt")
    ask.add_argument("--passage-words", type=positive, default=60, help="words of each passage in the prompt")
    ask.add_argument("--answer-prefix", default="", help="text the answer starts with (a prefill)")
    ask.add_argument("--no-generate", action="store_true", help="retrieve only")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--threads", type=positive, default=1)
    ask.set_defaults(func=cmd_ask)

    ev = rag_sub.add_parser("eval", help="federated vs centralized retrieval and answers; a results folder")
    ev.add_argument("config", help="RAG experiment TOML (e.g. experiments/rag.toml)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ev.set_defaults(func=cmd_eval)
