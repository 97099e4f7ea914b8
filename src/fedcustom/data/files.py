"""User data files (CSV, JSONL/JSON, a saved `datasets` directory) -> one labelled `Table`.

Every problem a file can have (no rows, a missing column, empty or non-text values, one class
only) is a one-line `UserError` naming the file, the column and the first bad row, found before
any model loads. data/datasets.py splits the table; the built-in datasets also read text here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import pandas as pd

from fedcustom.core.config import DataConfig
from fedcustom.core.errors import UserError


class Table(NamedTuple):
    """A whole labelled dataset before splitting."""

    texts: list[str]
    labels: np.ndarray  # int64, values in 0..len(label_names)-1
    label_names: list[str]
    targets: list[str] | None = None  # generation data: the response to each text


def read_text(file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC file is cp1252 (a pound sign)
        return raw.decode("cp1252", errors="replace")


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
            return read_json_records(path)
    except UserError:
        raise
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read dataset {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                        f"position {e.start}); save the file as UTF-8") from None
    except UnicodeEncodeError:  # a JSON escape of half a surrogate pair, such as \ud800
        raise UserError(f"cannot read dataset {path}: it holds a lone surrogate escape (such as "
                        "\\ud800), which is no valid text") from None
    except Exception as e:  # noqa: BLE001 - any reader failure is the user's file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read dataset {path}: {reason}") from None
    raise UserError(
        f"unsupported dataset file {path}: expected a .csv or .jsonl file "
        "or a directory saved with datasets' save_to_disk"
    )


def read_json_records(path: Path) -> pd.DataFrame:
    """JSON lines, one object per line (blank lines skipped); a .json file may instead hold one
    array of objects. Values stay as JSON parsed them (no dtype or date guessing)."""
    text = path.read_bytes().decode("utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"cannot read dataset {path}: invalid JSON at line {e.lineno} "
                            f"column {e.colno} ({e.msg})") from None
        where = "item"
    else:
        records, where = [], "line"
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may be in a string
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"cannot read dataset {path}: line {number} is not valid JSON "
                                    f"({e.msg} at column {e.colno})") from None
                if not isinstance(records[-1], dict):
                    raise UserError(f"cannot read dataset {path}: line {number} holds a JSON "
                                    f"{json_kind(records[-1])}, expected an object per line")
    if not isinstance(records, list):  # cannot happen for lines; an array's items are checked here
        records = [records]
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"cannot read dataset {path}: {where} {i + 1} holds a JSON "
                            f"{json_kind(record)}, expected an object")
    return pd.DataFrame.from_records(records) if records else pd.DataFrame()


def json_kind(value: Any) -> str:
    kinds = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


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


def check_values(path: str | Path, column: str, kind: str, values: list[Any]) -> None:
    """Every row of `column` holds a `kind` (text or label): a string or a finite number, neither
    missing nor a nested JSON value; text must be valid Unicode (the tokenizer needs UTF-8)."""
    rows = [i for i, v in enumerate(values) if is_missing(v)]
    if rows:
        raise UserError(
            f"{path}: {len(rows)} row(s) with no {kind} in column '{column}' "
            f"(first: row {rows[0]}); every row needs a {kind}"
        )
    for i, v in enumerate(values):
        if isinstance(v, list | dict | tuple | np.ndarray):
            raise UserError(f"{path}: row {i} of column '{column}' holds a {type(v).__name__}, "
                            f"not a {kind}; expected a string or a number")
        if isinstance(v, float | np.floating) and not np.isfinite(v):
            raise UserError(f"{path}: row {i} of column '{column}' is {v}; expected a finite {kind}")
        if isinstance(v, str) and not unicode_ok(v):
            raise UserError(f"{path}: row {i} of column '{column}' is not valid Unicode "
                            "(a lone surrogate escape); expected text that UTF-8 can encode")


def unicode_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    if len(df) == 0:  # first: an empty file has no columns either
        raise UserError(f"{path}: the dataset has no rows")
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in df.columns:
            raise UserError(
                f"{path}: no {role} column '{column}' (columns: {', '.join(map(str, df.columns))});"
                f" set data.{role}_column"
            )
    texts, labels = df[text_column].tolist(), df[label_column].tolist()
    for column, values, kind in ((label_column, labels, "label"), (text_column, texts, "text")):
        check_values(path, column, kind, values)
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
        check_values(path, column, "text", values)
    if cfg.label_column in df.columns and not any(is_missing(v) for v in df[cfg.label_column]):
        check_values(path, cfg.label_column, "label", df[cfg.label_column].tolist())
        labels, names = encode_labels(df[cfg.label_column].tolist())
    else:  # no groups: IID partitions (a Dirichlet draw over one group is IID too)
        labels, names = np.zeros(len(df), dtype=np.int64), ["all"]
    return Table([str(p) for p in prompts], labels, names, targets=[str(r) for r in responses])


def user_table(source: str | Path, df: pd.DataFrame, cfg: DataConfig) -> Table:
    """User rows (`source` names them in errors) as labelled text, or as prompt/response pairs."""
    if cfg.task == "generation" or (cfg.task == "auto" and has_pairs(df, cfg)):
        return load_user_pairs(source, df, cfg)
    return load_user_data(source, cfg.text_column, cfg.label_column, df)
