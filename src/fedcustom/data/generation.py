"""Built-in generation datasets: prompt/response pairs for causal LMs (bbc-headlines). A user
file with `prompt`/`response` columns (data.prompt_column/response_column) loads in datasets.py.

A pair keeps a `label` too: the group the non-IID partitioners split by (bbc-headlines: the
topic; a user file: its label column when it has one, else one group for everything).
"""

from __future__ import annotations

import numpy as np

from fedcustom.data.datasets import bbc_articles, builtin
from fedcustom.data.files import Table

HEADLINE_PROMPT = "Write a short headline for this news article.\n\n{body}"


@builtin("bbc-headlines", "2,225 BBC articles -> their headline (generation), topic as the label")
def load_bbc_headlines() -> Table:
    articles, names = bbc_articles()
    return Table([HEADLINE_PROMPT.format(body=body) for _, body, _ in articles],
                 np.array([a[2] for a in articles], dtype=np.int64), names,
                 targets=[headline for headline, _, _ in articles])
