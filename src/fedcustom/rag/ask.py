"""The Python API behind `fedcustom rag index` and `fedcustom rag ask`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcustom.core.errors import UserError
from fedcustom.rag.federation import FederatedRetriever, Hit, RagClient, Traffic, publish_summaries
from fedcustom.rag.generate import Generator
from fedcustom.rag.routing import SummaryRouter
from fedcustom.rag.store import Document, LocalStore, load_encoder


@dataclass
class Answer:
    question: str
    answer: str  # empty when no generator was given (retrieval only)
    passages: list[Hit]
    traffic: Traffic


def ask(question: str, retriever: FederatedRetriever, generator: Generator | None = None,
        context_passages: int = 3, query: str = "") -> Answer:
    """Federated retrieval (for `query`, default: the question), then an answer from the top
    `context_passages` merged passages."""
    if not question.strip():
        raise UserError("the question is empty")
    hits, traffic = retriever.retrieve(query.strip() or question)
    answer = generator.answer(question, hits[:context_passages]) if generator else ""
    return Answer(question, answer, hits, traffic)


def open_retriever(store_dirs: Sequence[str | Path], k: int = 5, per_client_k: int = 0, merge: str = "score",
                   rrf_k: int = 60, two_phase: bool = True, route: int = 0,
                   centroids: int = 16, term_weight: float = 0.0,
                   term_bits: int = 65536) -> FederatedRetriever:
    """One client per saved store folder, each with the encoder it was built with. `route` > 0:
    each query goes only to that many clients, chosen by the summaries each client publishes
    (`centroids`, and a word filter of `term_bits` where `term_weight` > 0; rag.routing)."""
    clients = [RagClient(LocalStore.load(path)) for path in store_dirs]
    router = None
    if route:
        bits = term_bits if term_weight else 0
        summaries, _ = publish_summaries(clients, centroids, seed=0, term_bits=bits)
        router = SummaryRouter(summaries, route, clients[0].store.encoder, term_weight)
    return FederatedRetriever(clients, k, per_client_k, merge, rrf_k, two_phase, router)


def read_documents(path: str | Path) -> list[Document]:
    """A folder of .txt files (id: the relative path) or a JSONL file with `id` and `text`
    (every other string field becomes metadata shown with the passages)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise UserError(f"{path} holds no .txt files")
        return [Document(str(f.relative_to(path)), f.read_text(errors="replace")) for f in files]
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        raise UserError(f"documents {path}: expected a folder of .txt files or a .jsonl file")
    docs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or "id" not in record:
            raise UserError(f"{path}:{n}: expected an object with 'id' and 'text' (a string)")
        meta = {k: v for k, v in record.items() if k not in ("id", "text") and isinstance(v, str)}
        docs.append(Document(str(record["id"]), record["text"], meta))
    return docs


def index_documents(store_dir: str | Path, docs_path: str | Path, encoder: str | None = None,
                    chunk_size: int = 150, chunk_overlap: int = 25) -> tuple[int, int]:
    """Create a store, or add to the one at `store_dir`; returns (passages added, passages in all)."""
    store_dir = Path(store_dir)
    if store_dir.exists():
        store = LocalStore.load(store_dir)
        if encoder is not None and encoder != store.encoder.name:
            raise UserError(f"{store_dir} was built with encoder '{store.encoder.name}', not '{encoder}'")
    else:
        store = LocalStore(load_encoder(encoder or "minilm"), chunk_size, chunk_overlap)
    added = store.add(read_documents(docs_path))
    store.save(store_dir)
    return added, len(store)
