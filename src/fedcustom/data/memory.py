"""In-memory data: a `datasets.Dataset` or `DatasetDict` handed over from Python
(`fedcustom.run(data=...)`) instead of a path, checked and encoded like a user file, never
written to disk.

A Dataset is one whole table, split by data.test_fraction like a CSV. A DatasetDict keeps its own
splits: `train` and `test`, and `validation` if it has one (else data.validation_fraction of train
is held out). Labels are encoded over all splits together, so an id means the same label in each.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import pandas as pd

from fedcustom.core.config import DataConfig
from fedcustom.core.errors import UserError
from fedcustom.data.datasets import TaskData, hold_out, split_table, task_data
from fedcustom.data.files import frame_of, has_pairs, user_table

# data.dataset of such a run: its saved config names no file, so the run cannot be loaded again
# from it (resumed, or its data reloaded); a model loads from the run's labels.json instead.
IN_MEMORY = "<in-memory>"
SPLITS = ("train", "test", "validation")


def from_datasets(data: Any, cfg: DataConfig) -> TaskData:
    if isinstance(data, datasets.Dataset):
        return split_table(user_table("data", frame_of(data), cfg), cfg, IN_MEMORY)
    if not isinstance(data, datasets.DatasetDict):
        raise UserError(f"data: expected a datasets.Dataset or DatasetDict, got {type(data).__name__}")
    if "train" not in data or "test" not in data or set(data) - set(SPLITS):
        raise UserError(f"data: a DatasetDict with splits {sorted(data)}; expected 'train' and 'test' "
                        "(and optionally 'validation'), or one Dataset to split by data.test_fraction")
    given = [s for s in SPLITS if s in data]
    frames = {s: frame_of(data[s]) for s in given}
    check_columns(frames, cfg)
    table = user_table("data", pd.concat(frames.values(), ignore_index=True), cfg)
    # each split's rows in the whole table, shuffled by split_seed like a file's split
    rng, start, rows = np.random.default_rng(cfg.split_seed), 0, {}
    for split in given:
        rows[split] = start + rng.permutation(len(frames[split]))
        start += len(frames[split])
    train, validation = rows["train"], rows.get("validation")
    if validation is None and cfg.validation_fraction > 0:
        validation, train = hold_out(train, table.labels, cfg.validation_fraction)
        if len(validation) == 0 or len(train) == 0:
            raise UserError(f"data['train']: {len(rows['train'])} examples are too few for "
                            f"validation_fraction {cfg.validation_fraction}")
    return task_data(IN_MEMORY, table, train, rows["test"], validation, cfg)


def check_columns(frames: dict[str, pd.DataFrame], cfg: DataConfig) -> None:
    """Every split has rows and the columns the task reads (the train split decides the task)."""
    pairs = cfg.task == "generation" or (cfg.task == "auto" and has_pairs(frames["train"], cfg))
    roles = (("prompt", cfg.prompt_column), ("response", cfg.response_column)) if pairs else (
        ("text", cfg.text_column), ("label", cfg.label_column))
    for split, frame in frames.items():
        if len(frame) == 0:
            raise UserError(f"data['{split}'] has no rows")
        for role, column in roles:
            if column not in frame.columns:
                raise UserError(f"data['{split}']: no {role} column '{column}' (columns: "
                                f"{', '.join(map(str, frame.columns))}); set data.{role}_column")
