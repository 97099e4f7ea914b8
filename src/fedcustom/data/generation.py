"""Generation datasets: prompt/response pairs for causal LMs, built in (bbc-headlines) or from a
user file with `prompt`/`response` columns (names set by data.prompt_column/response_column).

A pair keeps a `label` too: the group the non-IID partitioners split by (bbc-headlines: the
topic; a user file: its label column when it has one, else one group for everything).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedcustom.config import DataConfig
from fedcustom.data.datasets import Table, bbc_articles, builtin, encode_labels, is_missing
from fedcustom.errors import UserError

HEADLINE_PROMPT = "Write a short headline for this news article.\n\n{body}"


@builtin("bbc-headlines", "2,225 BBC articles -> their headline (generation), topic as the label")
def load_bbc_headlines() -> Table:
    articles, names = bbc_articles()
    return Table([HEADLINE_PROMPT.format(body=body) for _, body, _ in articles],
                 np.array([a[2] for a in articles], dtype=np.int64), names,
                 targets=[headline for headline, _, _ in articles])


def has_pairs(df: pd.DataFrame, cfg: DataConfig) -> bool:
    return {cfg.prompt_column, cfg.response_column} <= set(df.columns)


def load_user_pairs(path: Path, df: pd.DataFrame, cfg: DataConfig) -> Table:
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
