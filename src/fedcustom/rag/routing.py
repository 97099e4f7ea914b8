"""Query routing: ask only the clients likely to hold the answer (in the spirit of RAGRoute).

Each client publishes once a small summary of its index: the centroids of its passage vectors
(spherical k-means, computed on the client; no passage or vector leaves it). The server embeds a
query with the shared query encoder, scores each client by its centroid most similar to the
query, and sends the search to the `clients_per_query` best clients alone. The score merge over
their replies is exact for the passages they hold; what routing can lose is a relevant passage on
a client it did not ask, which the evaluation measures as recall against exact federated retrieval.
"""

from __future__ import annotations

import numpy as np

from fedcustom.core.errors import UserError
from fedcustom.rag.store import Encoder, LocalStore, faiss


def centroids(store: LocalStore, count: int, seed: int) -> np.ndarray:
    """[min(count, passages), dim] unit-norm centroids of the store's passage vectors (client side).
    A store with no more passages than `count` publishes the passages' vectors themselves."""
    vectors = np.ascontiguousarray(store.vectors(), dtype=np.float32)
    if len(vectors) <= count:
        return vectors.copy()
    kmeans = faiss().Kmeans(vectors.shape[1], count, niter=20, seed=seed, spherical=True)
    kmeans.train(vectors)
    return np.asarray(kmeans.centroids, dtype=np.float32)


def client_scores(query: np.ndarray, summaries: list[np.ndarray]) -> np.ndarray:
    """Each client's routing score: the cosine of the query with its most similar centroid
    (-inf for a client that published none, an empty store)."""
    q = query.reshape(-1)
    return np.array([float((s @ q).max()) if len(s) else -np.inf for s in summaries])


def route(query: np.ndarray, summaries: list[np.ndarray], n: int) -> list[int]:
    """The n clients with the highest scores, in client order; ties go to the lower index."""
    scores = client_scores(query, summaries)
    best = np.argsort(-scores, kind="stable")[:n]
    return sorted(int(c) for c in best)


class CentroidRouter:
    """The server side: the clients' published summaries and the query encoder that compares to them."""

    def __init__(self, summaries: list[np.ndarray], clients_per_query: int, encoder: Encoder) -> None:
        if not 1 <= clients_per_query <= len(summaries):
            raise UserError(f"clients_per_query = {clients_per_query}: expected an integer in "
                            f"1..{len(summaries)} (the clients)")
        self.summaries, self.n, self.encoder = summaries, clients_per_query, encoder

    def choose(self, query: str) -> list[int]:
        return route(self.encoder.encode_query(query), self.summaries, self.n)
