"""Federated retrieval: clients search their own stores, the server merges their top-k lists.

Everything that crosses the client boundary is a JSON message serialized to bytes, and the
bytes per query reported are the lengths of those messages: measured, not computed from shapes.
Two protocols:
- one phase: each client returns ids, scores and passage texts for its top k_c;
- two phases: clients first return only ids and scores; the server merges and then fetches the
  texts of the winners alone, so a client's losing passages never leave it.
A router (rag/routing.py) may limit a query to the clients its published summaries make likely.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from fedcustom.core.errors import UserError
from fedcustom.core.registry import Registry
from fedcustom.rag.routing import Summary, centroids, term_filter
from fedcustom.rag.store import Encoder, LocalStore, Passage


def pack(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def unpack(payload: bytes) -> dict[str, Any]:
    return json.loads(payload)


@dataclass(frozen=True)
class Hit:
    client: int
    passage: int  # the passage's id inside its client's store
    score: float  # the client's own similarity score
    rank: int  # 0-based rank in its client's list
    fused: float = 0.0  # what the merge ordered by
    doc_id: str = ""  # doc_id, text and meta are filled in only for passages that were sent
    text: str = ""
    meta: dict[str, str] = field(default_factory=dict)


MergeFn = Callable[[list[list[Hit]], int, int], list[Hit]]
MERGES: Registry[MergeFn] = Registry("merge")


@MERGES.register("score")
def merge_by_score(lists: list[list[Hit]], k: int, rrf_k: int) -> list[Hit]:
    """Exact: the k best client scores overall. With one encoder and every k_c >= k this is the
    top-k of one index over the union, because each global winner is in its own client's top-k."""
    hits = [h for hits in lists for h in hits]
    hits.sort(key=lambda h: (-h.score, h.client, h.rank))
    return [replace(h, fused=h.score) for h in hits[:k]]


@MERGES.register("rrf")
def merge_rrf(lists: list[list[Hit]], k: int, rrf_k: int) -> list[Hit]:
    """Reciprocal rank fusion, 1 / (rrf_k + rank): uses ranks only, so clients may use different
    encoders whose scores are not comparable. The clients' collections are disjoint, so every
    passage is in one list and RRF interleaves the lists by rank; ties go to the higher score."""
    hits = [replace(h, fused=1.0 / (rrf_k + h.rank + 1)) for hits in lists for h in hits]
    hits.sort(key=lambda h: (-h.fused, -h.score, h.client))
    return hits[:k]


def passage_record(passage: Passage) -> dict[str, Any]:
    return {"doc_id": passage.doc_id, "text": passage.text, "meta": passage.meta}


class RagClient:
    """The client side: answers `search` and `fetch` requests from its own store.

    `query_encoder` embeds the queries instead of the store's encoder: a tuned query tower
    (rag.tuning) beside the frozen document encoder that built the index, which stays valid."""

    def __init__(self, store: LocalStore, max_k: int = 0, query_encoder: Encoder | None = None) -> None:
        self.store = store
        self.max_k = max_k  # the client's own cap on passages per query (0: none)
        self.query_encoder = query_encoder or store.encoder
        # advertised, so the server can tell if scores compare: documents' and queries' encoders
        queries = "" if query_encoder is None else f" | queries: {query_encoder.name}"
        self.encoder = store.encoder.name + queries

    def handle(self, request: bytes) -> bytes:
        msg = unpack(request)
        if msg.get("op") == "search":
            k = min(int(msg["k"]), self.max_k or int(msg["k"]))
            scores, ids = self.store.search_vectors(self.query_encoder.encode_query(str(msg["query"])), k)
            reply: dict[str, Any] = {"ids": ids.tolist(), "scores": scores.tolist()}
            if msg.get("with_passages"):
                reply["passages"] = [passage_record(self.store.passages[i]) for i in ids]
            return pack(reply)
        if msg.get("op") == "summary":  # query routing: centroids of its vectors, a filter of its words
            summary = centroids(self.store, int(msg["centroids"]), int(msg["seed"]))
            bits = int(msg.get("term_bits", 0))
            terms = term_filter((p.text for p in self.store.passages), bits) if bits else b""
            return pack({"centroids": encode_array(summary), "shape": list(summary.shape),
                         "terms": base64.b64encode(bytes(terms)).decode()})
        if msg.get("op") == "fetch":
            ids = [int(i) for i in msg["ids"]]
            if any(not 0 <= i < len(self.store) for i in ids):
                raise UserError(f"fetch asks for passage ids outside 0..{len(self.store) - 1}")
            return pack({"passages": [passage_record(self.store.passages[i]) for i in ids]})
        raise UserError(f"unknown RAG request {msg.get('op')!r}; expected 'search', 'fetch' or 'summary'")


@dataclass
class Traffic:
    """Bytes of one query's messages: down = server to clients, up = clients to server."""

    down: int = 0
    up: int = 0
    passages_sent: int = 0  # passage texts that left their client
    clients_queried: int = 0  # clients the search was sent to

    def call(self, client: RagClient, message: dict[str, Any]) -> dict[str, Any]:
        request = pack(message)
        reply = client.handle(request)
        self.down, self.up = self.down + len(request), self.up + len(reply)
        return unpack(reply)


class Router(Protocol):
    """Picks the clients a query is sent to (rag.routing); without one, every client is asked."""

    def choose(self, query: str) -> list[int]: ...


class FederatedRetriever:
    """The server side: fans a query out, merges the replies, returns the k best passages."""

    def __init__(self, clients: Sequence[RagClient], k: int = 5, per_client_k: int | Sequence[int] = 0,
                 merge: str = "score", rrf_k: int = 60, two_phase: bool = True,
                 router: Router | None = None) -> None:
        if not clients:
            raise UserError("federated retrieval needs at least one client store")
        if k < 1:
            raise UserError(f"k = {k}: expected an integer >= 1")
        self.clients, self.k, self.rrf_k, self.two_phase = list(clients), k, rrf_k, two_phase
        self.router = router
        self.merge = MERGES.get(merge)
        ks = [per_client_k] * len(clients) if isinstance(per_client_k, int) else list(per_client_k)
        if len(ks) != len(clients) or any(c < 0 for c in ks):
            raise UserError(f"per_client_k = {per_client_k!r}: expected one integer >= 0, or one per client "
                            f"({len(clients)})")
        self.client_k = [c or k for c in ks]  # 0: the global k, which keeps the score merge exact
        encoders = sorted({c.encoder for c in self.clients})
        if merge == "score" and len(encoders) > 1:
            raise UserError(f"merge 'score' compares scores, but clients use different encoders {encoders}; "
                            "use merge 'rrf'")

    def retrieve(self, query: str) -> tuple[list[Hit], Traffic]:
        traffic = Traffic()
        lists = []
        asked = self.router.choose(query) if self.router else range(len(self.clients))
        traffic.clients_queried = len(asked)
        for c in asked:
            client, k_c = self.clients[c], self.client_k[c]
            reply = traffic.call(client, {"op": "search", "query": query, "k": k_c,
                                          "with_passages": not self.two_phase})
            texts = reply.get("passages") or [{}] * len(reply["ids"])
            traffic.passages_sent += len(reply.get("passages", []))
            rows = zip(reply["ids"], reply["scores"], texts, strict=True)
            lists.append([Hit(c, int(i), float(s), r, **text_fields(t)) for r, (i, s, t) in enumerate(rows)])
        winners = self.merge(lists, self.k, self.rrf_k)
        if self.two_phase:
            winners = self.fetch(winners, traffic)
        return winners, traffic

    def fetch(self, winners: list[Hit], traffic: Traffic) -> list[Hit]:
        """Phase two: ask each client only for the texts of its winning passages."""
        texts: dict[tuple[int, int], dict[str, Any]] = {}
        for c in sorted({h.client for h in winners}):
            ids = [h.passage for h in winners if h.client == c]
            reply = traffic.call(self.clients[c], {"op": "fetch", "ids": ids})
            texts.update({(c, i): t for i, t in zip(ids, reply["passages"], strict=True)})
            traffic.passages_sent += len(ids)
        return [replace(h, **text_fields(texts[h.client, h.passage])) for h in winners]


def publish_summaries(clients: Sequence[RagClient], count: int, seed: int,
                      term_bits: int = 0) -> tuple[list[Summary], int]:
    """Ask every client once for its routing summary: `count` centroids and, with `term_bits`, a
    filter of its words. Returns the summaries and the bytes of the messages."""
    traffic = Traffic()
    request = {"op": "summary", "centroids": count, "seed": seed, "term_bits": term_bits}
    replies = [traffic.call(client, request) for client in clients]
    return [Summary(decode_array(r["centroids"], r["shape"]),
                    np.frombuffer(base64.b64decode(r["terms"]), dtype=np.uint8)) for r in replies], \
        traffic.down + traffic.up


def encode_array(values: np.ndarray) -> str:
    """Unit vectors as base64 of float16 (~3 significant digits, ample for ranking clients): 2.7 bytes
    a number in the JSON message, against ~20 as decimal text."""
    return base64.b64encode(values.astype("<f2").tobytes()).decode()


def decode_array(text: str, shape: list[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32).reshape(shape)


def text_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {"doc_id": record.get("doc_id", ""), "text": record.get("text", ""),
            "meta": record.get("meta", {})}


def centralized_store(stores: Sequence[LocalStore]) -> LocalStore:
    """One store over the union of the clients' passages (the baseline that sees everything).
    The vectors are copied, not recomputed: with one shared encoder they are the same numbers."""
    if len({s.encoder.name for s in stores}) != 1:
        raise UserError("a centralized index over the union needs one shared encoder")
    first = stores[0]
    union = LocalStore(first.encoder, first.chunk_size, first.chunk_overlap)
    for store in stores:
        if len(store):
            union.add_passages(list(store.passages), store.vectors())
    return union

