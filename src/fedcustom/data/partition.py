"""Split the training set over clients with flwr-datasets partitioners; summarize the result.

The partitioners run on a small local `datasets.Dataset` of (label, row id), so the result is
a list of row indices into `train`: clients select their rows, nothing is copied or downloaded.
"""

from __future__ import annotations

import warnings

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    InnerDirichletPartitioner,
    Partitioner,
    ShardPartitioner,
)

from fedcustom.core.config import PartitionConfig
from fedcustom.core.errors import UserError
from fedcustom.core.text import table

ROW = "__row__"
ADVICE = "use fewer clients, a larger alpha or more data"


def balanced_sizes(n: int, num_clients: int) -> list[int]:
    """n // num_clients rows per client; the first n % num_clients clients get one more."""
    base, extra = divmod(n, num_clients)
    return [base + (client < extra) for client in range(num_clients)]


def make_partitioner(cfg: PartitionConfig, seed: int, n: int) -> Partitioner:
    """The flwr-datasets partitioner of `cfg.scheme` for `n` rows."""
    if cfg.scheme == "iid":
        return IidPartitioner(num_partitions=cfg.num_clients)
    if cfg.scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions=cfg.num_clients,
            partition_by="label",
            alpha=cfg.alpha,
            min_partition_size=cfg.min_size,
            self_balancing=False,
            seed=seed,
        )
    if cfg.scheme == "dirichlet-balanced":
        # DirichletPartitioner skews sizes as well as labels; this one fixes the sizes first
        return InnerDirichletPartitioner(
            partition_sizes=balanced_sizes(n, cfg.num_clients),
            partition_by="label",
            alpha=float(cfg.alpha),
            shuffle=True,
            seed=seed,
        )
    if cfg.scheme == "shard":
        return ShardPartitioner(
            num_partitions=cfg.num_clients,
            partition_by="label",
            num_shards_per_partition=cfg.shards_per_client,
            seed=seed,
        )
    raise UserError(
        f"partition.scheme = {cfg.scheme!r}: expected one of iid, dirichlet, dirichlet-balanced, shard"
    )


def partition_indices(
    train: datasets.Dataset, cfg: PartitionConfig, seed: int
) -> list[np.ndarray]:
    """Per client, the sorted row indices of `train` it holds.

    iid, dirichlet and dirichlet-balanced use every row. shard follows flwr-datasets'
    ShardPartitioner: shards have len(train) // (num_clients * shards_per_client) rows and the
    remainder (fewer than num_clients * shards_per_client rows) goes to no client.

    dirichlet-balanced (flwr-datasets' InnerDirichletPartitioner) gives every client
    len(train) // num_clients rows, the first len(train) % num_clients clients one more, and
    skews only the label mix: each client draws label weights from Dirichlet(alpha), then rows
    are dealt one at a time to a random client that is not yet full, with a label drawn from its
    weights. A label that runs out gets weight 0 and the client's other weights are rescaled.
    Below alpha 0.1 numpy's Dirichlet draws can hold exact zeros (from 0.1 up they hold none), so
    a client's weights can be 0 on every label that is left: it cannot be filled and the split is
    a UserError (use a larger alpha).
    """
    n = len(train)
    if n < cfg.num_clients * cfg.min_size:
        raise UserError(
            f"partition: {cfg.num_clients} clients with min_size {cfg.min_size} need at least "
            f"{cfg.num_clients * cfg.min_size} training examples, got {n}; {ADVICE}"
        )
    if cfg.scheme == "shard" and n < cfg.num_clients * cfg.shards_per_client:
        raise UserError(
            f"partition: {cfg.num_clients} clients x {cfg.shards_per_client} shards need at "
            f"least {cfg.num_clients * cfg.shards_per_client} training examples, got {n}; "
            "use fewer clients or shards_per_client"
        )
    rows = np.arange(n, dtype=np.int64)
    if cfg.scheme == "iid":
        # IidPartitioner cuts contiguous blocks: shuffle first so the split is random and seeded.
        rows = np.random.default_rng(seed).permutation(n)
    labels = np.asarray(train["label"], dtype=np.int64)[rows]
    if cfg.scheme == "dirichlet-balanced":
        # InnerDirichletPartitioner looks up labels 0..k-1 (k distinct labels): with labels 0 and
        # 2 but no 1 it would never deal label 2's rows and fail. Number them densely (a no-op
        # when they already are).
        labels = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    local = datasets.Dataset.from_dict({"label": labels, ROW: rows})
    partitioner = make_partitioner(cfg, seed, n)
    partitioner.dataset = local
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Dirichlet resampling warns on every retry
            parts = [
                np.sort(np.asarray(partitioner.load_partition(i)[ROW], dtype=np.int64))
                for i in range(cfg.num_clients)
            ]
    except Exception as e:  # noqa: BLE001 - flwr-datasets reports impossible splits in many ways
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if cfg.scheme == "dirichlet-balanced" and "NaN" in reason:
            # numpy's "Probabilities contain NaN": the client's weights on the labels left sum to 0
            reason = "a client's Dirichlet draw has no weight on the labels left to fill it"
        raise UserError(
            f"partition: scheme '{cfg.scheme}' cannot split {n} examples over "
            f"{cfg.num_clients} clients (min_size {cfg.min_size}): {reason}; {ADVICE}"
        ) from None
    for client, part in enumerate(parts):
        if len(part) < cfg.min_size:
            raise UserError(
                f"partition: client {client} would hold {len(part)} examples "
                f"(min_size {cfg.min_size}); {ADVICE}"
            )
    return parts


def partition_table(
    train: datasets.Dataset, parts: list[np.ndarray], label_names: list[str]
) -> str:
    """Plain-text table: one row per client with its size and per-label counts, then a total."""
    labels = np.asarray(train["label"], dtype=np.int64)
    k = len(label_names)
    counts = [np.bincount(labels[part], minlength=k)[:k] for part in parts]
    header = ["client", "size", *(name[:12] for name in label_names)]
    body = [
        [str(i), str(len(p)), *map(str, c)]
        for i, (p, c) in enumerate(zip(parts, counts, strict=True))
    ]
    total = np.sum(counts, axis=0) if counts else np.zeros(k, dtype=np.int64)
    body.append(["total", str(sum(len(p) for p in parts)), *map(str, total)])
    return table(header, body)
