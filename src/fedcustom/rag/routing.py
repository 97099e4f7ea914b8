"""Query routing: ask only the clients likely to hold the answer (in the spirit of RAGRoute).

Each client publishes once a small summary of its index, computed on the client (no passage or
vector leaves it): the centroids of its passage vectors (spherical k-means) and, optionally, a
Bloom filter of the words in its passages. The server scores each client for a query by

    dense: the cosine of the query's vector with the client's most similar centroid, plus
    term_weight x lexical: the sum, over the query's words the client's filter holds, of
                          log(clients / clients holding the word)

and sends the search to the `clients_per_query` best clients alone. The lexical part is a
client-level IDF: a word every client holds adds nothing; a name only one client holds adds
log(N). It catches what the centroids blur (names and rare terms that a sentence shares with its
article). The score merge over the asked clients' replies is exact for the passages they hold;
what routing can lose is a relevant passage on a client it did not ask, which the evaluation
measures as recall against exact federated retrieval.

What a summary reveals: centroids are averages of a client's passage vectors; a Bloom filter lets
the server test whether a word it guesses occurs in a client's passages (with a small false-positive
rate). Publish term filters only where that is acceptable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedcustom.core.errors import UserError
from fedcustom.rag.store import Encoder, LocalStore, faiss

HASHES = 4  # Bloom filter probes per word: at 64 Ki bits and ~4,500 words, ~0.3% false positives
WORD = re.compile(r"[a-z0-9]+")


def centroids(store: LocalStore, count: int, seed: int) -> np.ndarray:
    """[min(count, passages), dim] unit-norm centroids of the store's passage vectors (client side).
    A store with no more passages than `count` publishes the passages' vectors themselves."""
    vectors = np.ascontiguousarray(store.vectors(), dtype=np.float32)
    if len(vectors) <= count:
        return vectors.copy()
    kmeans = faiss().Kmeans(vectors.shape[1], count, niter=20, seed=seed, spherical=True)
    kmeans.train(vectors)
    return np.asarray(kmeans.centroids, dtype=np.float32)


def words(text: str) -> set[str]:
    """The routing vocabulary of a text: lower-cased alphanumeric words of 3+ characters."""
    return {w for w in WORD.findall(text.lower()) if len(w) > 2}


def probes(word: str, bits: int) -> list[int]:
    """The filter positions of a word (double hashing over one 128-bit digest)."""
    digest = hashlib.blake2b(word.encode(), digest_size=16).digest()
    h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1
    return [(h1 + i * h2) % bits for i in range(HASHES)]


def term_filter(texts: Iterable[str], bits: int) -> np.ndarray:
    """A Bloom filter (packed into bits // 8 bytes) of every word of `texts` (client side)."""
    if bits < 8 or bits % 8:
        raise UserError(f"term_bits = {bits}: expected a positive multiple of 8")
    flags = np.zeros(bits, dtype=bool)
    for word in set().union(*(words(t) for t in texts)):
        flags[probes(word, bits)] = True
    return np.packbits(flags)


def holds(packed: np.ndarray, word: str) -> bool:
    """Whether a filter may hold `word` (never False for a word it holds)."""
    bits = len(packed) * 8
    return all(packed[p >> 3] & (0x80 >> (p & 7)) for p in probes(word, bits))


@dataclass(frozen=True)
class Summary:
    """What one client publishes for routing: centroids, and a term filter (empty: none)."""

    centroids: np.ndarray
    terms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))


def dense_scores(query: np.ndarray, summaries: Sequence[Summary]) -> np.ndarray:
    """Each client's cosine of the query with its most similar centroid (-inf: it published none)."""
    q = query.reshape(-1)
    return np.array([float((s.centroids @ q).max()) if len(s.centroids) else -np.inf for s in summaries])


def term_scores(text: str, summaries: Sequence[Summary]) -> np.ndarray:
    """Each client's sum of log(clients / clients holding the word) over the query's words it holds."""
    held = np.array([[len(s.terms) > 0 and holds(s.terms, w) for s in summaries]
                     for w in sorted(words(text))], dtype=bool).reshape(-1, len(summaries))
    counts = held.sum(axis=1, keepdims=True)
    weight = np.log(len(summaries) / np.maximum(counts, 1))
    return (held * weight).sum(axis=0)


def client_scores(query: np.ndarray, summaries: Sequence[Summary], text: str = "",
                  term_weight: float = 0.0) -> np.ndarray:
    scores = dense_scores(query, summaries)
    return scores + term_weight * term_scores(text, summaries) if term_weight else scores


def route(scores: np.ndarray, n: int) -> list[int]:
    """The n clients with the highest scores, in client order; ties go to the lower index."""
    best = np.argsort(-scores, kind="stable")[:n]
    return sorted(int(c) for c in best)


class SummaryRouter:
    """The server side: the clients' published summaries, the query encoder that compares to them,
    and the weight of the lexical score (0: centroids alone)."""

    def __init__(self, summaries: Sequence[Summary], clients_per_query: int, encoder: Encoder,
                 term_weight: float = 0.0) -> None:
        if not 1 <= clients_per_query <= len(summaries):
            raise UserError(f"clients_per_query = {clients_per_query}: expected an integer in "
                            f"1..{len(summaries)} (the clients)")
        if term_weight < 0:
            raise UserError(f"term_weight = {term_weight}: expected a number >= 0")
        if term_weight and not all(len(s.terms) for s in summaries):
            raise UserError(f"term_weight = {term_weight} needs every client's term filter; "
                            "publish summaries with term_bits > 0")
        self.summaries, self.n, self.encoder = list(summaries), clients_per_query, encoder
        self.term_weight = term_weight

    def choose(self, query: str) -> list[int]:
        scores = client_scores(self.encoder.encode_query(query), self.summaries, query, self.term_weight)
        return route(scores, self.n)
