"""A client's private document store: chunking, sentence embeddings, a FAISS index, save/load.

Embeddings are mean-pooled token states, L2-normalized, so the inner product a flat FAISS index
computes is the cosine similarity. The index is exact (IndexFlatIP): its position i is passage i,
which keeps passage ids stable across save/load and `add` without an id map.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcustom.core.errors import UserError
from fedcustom.core.extras import require
from fedcustom.core.io import atomic_write
from fedcustom.models.backbones import resolve

STORE_FORMAT = "fedcustom-rag-store-1"
INDEX_FILE, PASSAGES_FILE, META_FILE = "index.faiss", "passages.jsonl", "store.json"


def faiss() -> Any:
    """The faiss module (an optional package: the `rag` extra)."""
    return require("faiss", "a RAG document store")


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    meta: dict[str, str] = field(default_factory=dict)  # shown with its passages (e.g. a topic)


@dataclass(frozen=True)
class Passage:
    doc_id: str
    text: str
    meta: dict[str, str]


def chunk_words(text: str, size: int, overlap: int) -> list[str]:
    """Windows of `size` words that overlap by `overlap`, so no sentence is cut off from both sides."""
    words = text.split()
    if not words:
        return []
    step = size - overlap
    starts = range(0, max(len(words) - overlap, 1), step)
    return [" ".join(words[s:s + size]) for s in starts]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The sentence embedding: token states averaged over the attention mask, L2-normalized (the
    one pooling of both the frozen encoder and the tuned query encoder, rag.tuning)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


class Encoder:
    """A sentence encoder from any transformers encoder model: mean pooling + L2 normalization.
    `model` and `tokenizer` given: wrap them (a tuned query encoder) instead of loading `name`."""

    def __init__(self, name: str, max_length: int = 256, batch_size: int = 32,
                 model: torch.nn.Module | None = None, tokenizer: Any = None) -> None:
        if model is None or tokenizer is None:
            model, tokenizer = load_model(name)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name, self.max_length, self.batch_size = name, max_length, batch_size
        self.dim = int(self.model.config.hidden_size)
        self._query_cache: dict[str, np.ndarray] = {}

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        self.model.eval()  # a wrapped model may come straight from training (dropout on)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding small; the attention mask makes results order-independent.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            out[rows] = mean_pool(hidden, batch["attention_mask"]).numpy()
        return out

    def encode_query(self, query: str) -> np.ndarray:
        """One query as a (1, dim) array; memoized because every client of a simulation shares us."""
        if query not in self._query_cache:
            self._query_cache[query] = self.encode([query])
        return self._query_cache[query]

    def remember_queries(self, queries: list[str]) -> None:
        """Forget every memoized query, then embed `queries` in batches (an evaluation's query set
        at once: much faster than one by one; the weights may have changed since the last call)."""
        vectors = self.encode(queries)
        self._query_cache = {q: vectors[i:i + 1] for i, q in enumerate(queries)}


def load_model(name: str) -> tuple[torch.nn.Module, Any]:
    """An encoder model (float32) and its tokenizer: packaged name, local dir or hub id."""
    from transformers import AutoModel, AutoTokenizer

    source, kwargs = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModel.from_pretrained(source, dtype=torch.float32, **kwargs)
    except OSError as e:
        raise UserError(f"cannot load encoder '{name}': {str(e).splitlines()[0]}") from None
    return model, tokenizer


@functools.cache
def load_encoder(name: str, max_length: int = 256, batch_size: int = 32) -> Encoder:
    """One encoder per (name, settings) per process: in a simulation clients share the weights."""
    return Encoder(name, max_length, batch_size)


class LocalStore:
    """One client's passages and their exact inner-product index."""

    def __init__(self, encoder: Encoder, chunk_size: int = 120, chunk_overlap: int = 20) -> None:
        if not 0 <= chunk_overlap < chunk_size:
            raise UserError(f"chunk_overlap = {chunk_overlap}: expected 0 <= overlap < chunk_size "
                            f"({chunk_size})")
        self.encoder, self.chunk_size, self.chunk_overlap = encoder, chunk_size, chunk_overlap
        self.index = faiss().IndexFlatIP(encoder.dim)
        self.passages: list[Passage] = []
        self.doc_ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.passages)

    def add(self, documents: Iterable[Document]) -> int:
        """Chunk, embed and index new documents; returns the number of passages added."""
        new: list[Passage] = []
        for doc in documents:
            if doc.doc_id in self.doc_ids:
                raise UserError(f"document id '{doc.doc_id}' is already in the store")
            self.doc_ids.add(doc.doc_id)
            new += [Passage(doc.doc_id, text, dict(doc.meta))
                    for text in chunk_words(doc.text, self.chunk_size, self.chunk_overlap)]
        if new:
            self.add_passages(new, self.encoder.encode([p.text for p in new]))
        return len(new)

    def add_passages(self, passages: list[Passage], vectors: np.ndarray) -> None:
        """Index passages whose embeddings are already known (e.g. copied from another store)."""
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.passages += passages
        self.doc_ids.update(p.doc_id for p in passages)

    def vectors(self) -> np.ndarray:
        return self.index.reconstruct_n(0, self.index.ntotal)

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, passage ids) of the k best passages, best first; fewer if the store is small."""
        return self.search_vectors(self.encoder.encode_query(query), k)

    def search_vectors(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores, ids = self.index.search(np.ascontiguousarray(vector, dtype=np.float32), k)
        return scores[0], ids[0]

    # --- persistence: a folder with the FAISS index, passages as JSON lines, and settings ----

    def save(self, path: str | Path) -> Path:
        """Write to a temp folder, then swap it in: a crash never leaves a half-written store."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        faiss().write_index(self.index, str(tmp / INDEX_FILE))
        atomic_write(tmp / PASSAGES_FILE, "".join(json.dumps(asdict(p)) + "\n" for p in self.passages))
        atomic_write(tmp / META_FILE, json.dumps(self.settings(), indent=2))
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        return path

    def settings(self) -> dict[str, Any]:
        return {"format": STORE_FORMAT, "encoder": self.encoder.name, "max_length": self.encoder.max_length,
                "dim": self.encoder.dim, "chunk_size": self.chunk_size, "chunk_overlap": self.chunk_overlap,
                "passages": len(self.passages)}

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder | None = None) -> LocalStore:
        """A saved store; its encoder is loaded by the saved name unless one is given."""
        path = Path(path)
        try:
            meta = json.loads((path / META_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(f"{path} is not a fedcustom RAG store (no readable {META_FILE})") from None
        if meta.get("format") != STORE_FORMAT:
            raise UserError(f"{path}/{META_FILE}: unknown store format {meta.get('format')!r}")
        encoder = encoder or load_encoder(meta["encoder"], meta["max_length"])
        if encoder.name != meta["encoder"] or encoder.dim != meta["dim"]:
            raise UserError(f"{path} was built with encoder '{meta['encoder']}', not '{encoder.name}'")
        store = cls(encoder, meta["chunk_size"], meta["chunk_overlap"])
        store.index = faiss().read_index(str(path / INDEX_FILE))
        lines = (path / PASSAGES_FILE).read_text().splitlines()
        store.passages = [Passage(**json.loads(line)) for line in lines]
        store.doc_ids = {p.doc_id for p in store.passages}
        if store.index.ntotal != len(store.passages):
            raise UserError(f"{path}: index holds {store.index.ntotal} vectors, passages.jsonl "
                            f"{len(store.passages)} passages")
        return store
