"""Client partitions of the training set: coverage, determinism, label skew, errors, table."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from fedcustom.core.config import PartitionConfig
from fedcustom.core.errors import UserError
from fedcustom.data import partition_indices, partition_table


def make_train(n: int = 2000, classes: int = 4, seed: int = 0) -> datasets.Dataset:
    labels = np.random.default_rng(seed).permutation(np.arange(n) % classes)
    return datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": labels})


@pytest.fixture(scope="module")
def train() -> datasets.Dataset:
    return make_train()


def mean_tv_distance(train: datasets.Dataset, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    labels = np.asarray(train["label"])
    k = labels.max() + 1
    overall = np.bincount(labels, minlength=k) / len(labels)
    mixes = [np.bincount(labels[p], minlength=k) / len(p) for p in parts]
    return float(np.mean([0.5 * np.abs(m - overall).sum() for m in mixes]))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_every_row_goes_to_exactly_one_client(train: datasets.Dataset, scheme: str) -> None:
    parts = partition_indices(train, PartitionConfig(scheme=scheme, num_clients=10), seed=0)
    assert len(parts) == 10
    joined = np.concatenate(parts)
    assert len(joined) == len(train)
    assert np.array_equal(np.sort(joined), np.arange(len(train)))
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)


def test_iid_is_balanced_and_seeded(train: datasets.Dataset) -> None:
    cfg = PartitionConfig(scheme="iid", num_clients=8)
    parts = partition_indices(train, cfg, seed=0)
    assert {len(p) for p in parts} == {250}
    assert mean_tv_distance(train, parts) < 0.06
    # not contiguous blocks: the rows were shuffled before IidPartitioner cut them
    assert parts[0][-1] - parts[0][0] > 1000
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_indices(train, cfg, 0),
                                                    strict=True))
    assert not np.array_equal(parts[0], partition_indices(train, cfg, 1)[0])


@pytest.mark.parametrize("scheme", ["dirichlet", "shard"])
def test_same_seed_same_partition_other_seed_differs(train: datasets.Dataset, scheme: str) -> None:
    cfg = PartitionConfig(scheme=scheme, num_clients=10, alpha=0.5)
    first, again = partition_indices(train, cfg, 3), partition_indices(train, cfg, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = partition_indices(train, cfg, 4)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    if scheme == "dirichlet":
        assert [len(p) for p in first] != [len(p) for p in other]


def test_label_skew_grows_as_alpha_falls(train: datasets.Dataset) -> None:
    def skew(alpha: float) -> float:
        cfg = PartitionConfig(scheme="dirichlet", num_clients=10, alpha=alpha, min_size=10)
        return mean_tv_distance(train, partition_indices(train, cfg, seed=0))

    low, mid, high = skew(0.1), skew(1.0), skew(100.0)
    assert high < 0.1
    assert low > 0.4
    assert low > mid > high


def test_shard_gives_each_client_few_labels(train: datasets.Dataset) -> None:
    cfg = PartitionConfig(scheme="shard", num_clients=10, shards_per_client=2)
    parts = partition_indices(train, cfg, seed=0)
    labels = np.asarray(train["label"])
    assert max(len(np.unique(labels[p])) for p in parts) <= 2
    assert {len(p) for p in parts} == {200}  # 20 shards of 2000 // 20 rows
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) == 2000


def test_shard_drops_only_the_remainder() -> None:
    train = make_train(n=2013)
    parts = partition_indices(train, PartitionConfig(scheme="shard", num_clients=5), seed=0)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) == 2010  # 10 shards of 201; 3 rows unused


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_dirichlet_balanced_sizes_are_equal_and_every_row_used(alpha: float) -> None:
    train = make_train(n=503)
    cfg = PartitionConfig(scheme="dirichlet-balanced", num_clients=10, alpha=alpha)
    parts = partition_indices(train, cfg, seed=0)
    assert [len(p) for p in parts] == [51] * 3 + [50] * 7  # 503 = 10 * 50 + 3
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(503))
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)


def test_dirichlet_balanced_is_seeded() -> None:
    train = make_train(n=503)
    cfg = PartitionConfig(scheme="dirichlet-balanced", num_clients=10, alpha=0.5)
    first, again = partition_indices(train, cfg, 3), partition_indices(train, cfg, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = partition_indices(train, cfg, 4)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert [len(p) for p in first] == [len(p) for p in other]  # only the label mix moves


def test_dirichlet_balanced_skews_labels_only_at_small_alpha() -> None:
    # Seed 0 gives 0.419 at alpha 0.1 and 0.058 at alpha 1000 (sampling noise of 100 rows per
    # client); over seeds 0-39 they range 0.299-0.561 and 0.052-0.095, inside both bounds.
    train = make_train(n=1000)

    def skew(alpha: float) -> float:
        cfg = PartitionConfig(scheme="dirichlet-balanced", num_clients=10, alpha=alpha)
        return mean_tv_distance(train, partition_indices(train, cfg, seed=0))

    low, high = skew(0.1), skew(1000.0)
    assert low > 0.25
    assert high < 0.12


def test_dirichlet_balanced_takes_labels_that_skip_numbers() -> None:
    # labels 1, 5 and 9 only: InnerDirichletPartitioner alone expects 0..k-1 and fails on these
    labels = np.random.default_rng(0).permutation(np.arange(300) % 3) * 4 + 1
    train = datasets.Dataset.from_dict({"text": ["t"] * 300, "label": labels})
    cfg = PartitionConfig(scheme="dirichlet-balanced", num_clients=4, alpha=1.0)
    parts = partition_indices(train, cfg, seed=0)
    assert [len(p) for p in parts] == [75] * 4
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(300))


def test_dirichlet_balanced_client_that_cannot_be_filled_is_a_user_error() -> None:
    # alpha 0.001: numpy's Dirichlet draws hold exact zeros, and some client's labels run out
    cfg = PartitionConfig(scheme="dirichlet-balanced", num_clients=10, alpha=0.001)
    with pytest.raises(UserError) as info:
        partition_indices(make_train(n=200), cfg, seed=0)
    assert str(info.value) == (
        "partition: scheme 'dirichlet-balanced' cannot split 200 examples over 10 clients "
        "(min_size 1): a client's Dirichlet draw has no weight on the labels left to fill it; "
        "use fewer clients, a larger alpha or more data"
    )


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "dirichlet-balanced", "shard"])
def test_more_clients_than_examples_is_a_user_error(scheme: str) -> None:
    cfg = PartitionConfig(scheme=scheme, num_clients=30)
    with pytest.raises(UserError, match=r"30 clients with min_size 1 need at least 30 .* got 20"):
        partition_indices(make_train(n=20), cfg, seed=0)


def test_too_few_rows_for_shards_is_a_user_error() -> None:
    cfg = PartitionConfig(scheme="shard", num_clients=10, shards_per_client=3)
    with pytest.raises(UserError, match=r"10 clients x 3 shards need at least 30 .* got 25"):
        partition_indices(make_train(n=25), cfg, seed=0)


def test_client_below_min_size_is_a_user_error() -> None:
    # 119 rows, 20 shards of 5: every client gets 10 rows, one short of min_size 11
    cfg = PartitionConfig(scheme="shard", num_clients=10, shards_per_client=2, min_size=11)
    with pytest.raises(UserError) as info:
        partition_indices(make_train(n=119), cfg, seed=0)
    assert str(info.value) == (
        "partition: client 0 would hold 10 examples (min_size 11); "
        "use fewer clients, a larger alpha or more data"
    )


def test_unreachable_dirichlet_min_size_is_a_user_error() -> None:
    cfg = PartitionConfig(scheme="dirichlet", num_clients=10, alpha=0.01, min_size=15)
    with pytest.raises(UserError, match=r"scheme 'dirichlet' cannot split 200 examples over 10"):
        partition_indices(make_train(n=200), cfg, seed=0)


def test_table_lists_every_client_and_the_totals() -> None:
    train = make_train(n=300, classes=3)
    parts = partition_indices(train, PartitionConfig(scheme="dirichlet", num_clients=4), seed=0)
    names = ["entertainment", "b", "c"]
    lines = partition_table(train, parts, names).splitlines()
    assert lines[0].split() == ["client", "size", "entertainmen", "b", "c"]
    assert len(lines) == 4 + 3  # header, rule, clients, total
    labels = np.asarray(train["label"])
    for client, (line, part) in enumerate(zip(lines[2:6], parts, strict=True)):
        expected = [client, len(part), *np.bincount(labels[part], minlength=3)]
        assert [int(x) for x in line.split()] == expected
    assert lines[-1].split() == ["total", "300", "100", "100", "100"]
