"""Federated retrieval-augmented generation: every client keeps its own documents and FAISS index.

The server sends a query; each client embeds it with its encoder and searches its own index; the
server merges the per-client top-k lists (by exact score, or by reciprocal rank fusion when the
clients' scores are not comparable) and a causal LM answers with the merged passages as context.
Documents never leave a client except the passages it returns for a query. This is the `none`
exchange of DESIGN.md: no tensors travel, only a query and passages, so it has its own runner
rather than a round-based training job.
"""

from fedcustom.rag.federation import FederatedRetriever, Hit, RagClient
from fedcustom.rag.store import Document, Encoder, LocalStore, load_encoder

__all__ = ["Document", "Encoder", "FederatedRetriever", "Hit", "LocalStore", "RagClient", "load_encoder"]
