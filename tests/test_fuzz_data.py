"""Property tests: whatever a user's data file holds (random bytes, other encodings, odd quoting,
empty and huge fields, missing values, wrong column names, nested JSON values), loading it either
gives clean splits the tokenizer accepts or raises a one-line UserError; never another exception.

Sized for 2 cores: no model loads, a few hundred small files in all (about 10 s)."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from fedcustom.core.config import DataConfig
from fedcustom.core.errors import UserError
from fedcustom.data.datasets import TaskData, load_task_data

# FEDCUSTOM_FUZZ_EXAMPLES=5000 for a deeper search than the suite's
FUZZ = settings(max_examples=int(os.environ.get("FEDCUSTOM_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
COLUMNS = st.sampled_from(["text", "label", "prompt", "response", "Text", "label ", "", "x"])
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252", "utf-32"])
HUGE = "x" * 300_000
# cells: short and long, quotes, separators, newlines, control characters, lone surrogates
FIELD = st.one_of(
    st.text(max_size=12), st.text(max_size=12),
    st.sampled_from(["", " ", '"', '""', ",", "\n", "\r\n", "NA", "null", "nan", "NaN", "inf", "-0",
                     "1", "1.0", "0", "1e400", "True", "\x00", "\ud800", "\ufeff", "\u2028", "é",
                     "😀", HUGE]),
)
LABEL = st.sampled_from(["0", "1", "pos", "neg", "2", "1.0", "", "NA", "inf", "-1", " "])
GOOD_TEXT = st.text(min_size=1, max_size=20).filter(str.strip)


@st.composite
def mostly_good(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> list[Any]:
    """A few well-formed rows (so that many files load) with up to three odd ones among them."""
    rows = draw(st.lists(good, min_size=2, max_size=14))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        rows.insert(draw(st.integers(0, len(rows))), draw(bad))
    return rows


# well-formed rows, and odd ones: any cells, too few or too many
ROWS = mostly_good(st.tuples(GOOD_TEXT, st.sampled_from(["pos", "neg", "0", "1"])).map(list),
                   st.one_of(st.tuples(FIELD, LABEL).map(list), st.lists(FIELD, max_size=4)))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["\ud800", "", "NA"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
SCALAR = st.one_of(st.text(max_size=10), st.integers(-2**70, 2**70), st.floats(), st.booleans(),
                   st.none(), st.sampled_from(["", "NA", "\ud800", "a\u2028b", HUGE]))
LABEL_JSON = st.one_of(st.integers(0, 2), st.sampled_from(["pos", "neg"]), SCALAR, JSON_VALUES)
RECORDS = st.one_of(
    mostly_good(st.fixed_dictionaries({"text": GOOD_TEXT, "label": st.integers(0, 2)}),
                st.one_of(st.fixed_dictionaries({"text": SCALAR, "label": LABEL_JSON}),
                          st.fixed_dictionaries({"text": GOOD_TEXT}),
                          st.dictionaries(COLUMNS, JSON_VALUES, max_size=4), JSON_VALUES)),
    mostly_good(st.fixed_dictionaries({"prompt": GOOD_TEXT, "response": GOOD_TEXT},
                                      optional={"label": st.sampled_from(["a", "b"])}),
                st.one_of(st.fixed_dictionaries({"prompt": SCALAR, "response": SCALAR},
                                                optional={"label": LABEL_JSON}),
                          st.dictionaries(COLUMNS, JSON_VALUES, max_size=4), JSON_VALUES)),
)
TASKS = st.sampled_from(["auto", "auto", "classification", "generation"])


@functools.cache
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from fedcustom.models.backbones import resolve

    return AutoTokenizer.from_pretrained(resolve("minilm")[0])


def load(name: str, content: bytes, **data: Any) -> TaskData | None:
    """Write `content` as `name` in a fresh folder and load it; None when it is refused with a
    one-line UserError. Loaded splits must be clean: non-empty string texts the tokenizer encodes
    and labels within the label names."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        cfg = DataConfig(dataset=str(path), test_fraction=0.25, **data)
        try:
            loaded = load_task_data(cfg)
        except UserError as e:
            message = str(e)
            assert message and "\n" not in message and "\r" not in message, repr(message)
            event("refused: " + " ".join(message.replace(str(path), "FILE").split()[:5])[:50])
            return None
    event(f"loaded: {loaded.kind}")
    for split in (loaded.train, loaded.test):
        texts = list(split["text"]) + (list(split["target"]) if "target" in split.column_names else [])
        assert all(isinstance(t, str) and t.strip() for t in texts)
        for t in texts:
            t.encode("utf-8")  # a lone surrogate would break the tokenizer and the arrow files
        tokenizer()(texts[:50], truncation=True, max_length=16)
        assert all(0 <= label < len(loaded.label_names) for label in split["label"])
    return loaded


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["d.csv", "d.jsonl", "d.json", "d.txt"]))
@example(b"", "d.csv")
@example(b"", "d.jsonl")
@example(b"\xff\xfe\x00\x00", "d.jsonl")
@example(b"[" * 5000, "d.json")
def test_random_bytes_load_or_fail_in_one_line(content: bytes, name: str) -> None:
    load(name, content)


def csv_bytes(header: list[str], rows: list[list[str]], encoding: str, quoting: int, delimiter: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, quoting=quoting, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode(encoding, errors="surrogatepass" if "utf" in encoding else "replace")


@FUZZ
@given(header=st.one_of(st.just(["text", "label"]), st.just(["label", "text", "extra"]),
                        st.just(["prompt", "response"]), st.lists(COLUMNS, min_size=1, max_size=4)),
       rows=ROWS,
       encoding=st.one_of(st.just("utf-8"), ENCODINGS),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
       delimiter=st.sampled_from([",", ",", ",", ";", "\t"]),
       task=TASKS)
@example(header=["text", "label"], rows=[["a", "1"], ["b", "0"]] * 4, encoding="utf-16",
         quoting=csv.QUOTE_MINIMAL, delimiter=",", task="auto")
@example(header=["text", "label"], rows=[["a", "1"], ["\ud800", "0"]] * 4, encoding="utf-8",
         quoting=csv.QUOTE_MINIMAL, delimiter=",", task="auto")
@example(header=["text", "label"], rows=[['a\nb, "c"', "1"], [HUGE, "0"]] * 4,
         encoding="utf-8-sig", quoting=csv.QUOTE_MINIMAL, delimiter=",", task="auto")
def test_csv_files_load_or_fail_in_one_line(header: list[str], rows: list[list[str]], encoding: str,
                                           quoting: int, delimiter: str, task: str) -> None:
    try:
        content = csv_bytes(header, rows, encoding, quoting, delimiter)
    except csv.Error:  # QUOTE_NONNUMERIC cannot write some fields: no file to test
        return
    load("d.csv", content, task=task)


@FUZZ
@given(records=RECORDS,
       name=st.sampled_from(["d.jsonl", "d.jsonl", "d.json", "d.json-array"]),
       blank=st.booleans(), task=TASKS)
@example(records=[{"text": "a", "label": 1}, {"text": "b", "label": 0}] * 4, name="d.jsonl",
         blank=False, task="auto")
@example(records=[{"text": "a", "label": float("inf")}, {"text": "b", "label": 0}] * 4,
         name="d.jsonl", blank=False, task="auto")
@example(records=[{"text": "a", "label": [1]}, {"text": "b", "label": 0}] * 4, name="d.jsonl",
         blank=False, task="auto")
@example(records=[{"text": {"a": 1}, "label": 1}, {"text": "b", "label": 0}] * 4, name="d.jsonl",
         blank=False, task="auto")
@example(records=[{"text": "\ud800", "label": 1}, {"text": "b", "label": 0}] * 4, name="d.jsonl",
         blank=False, task="auto")
@example(records=[[1, 2], {"text": "b", "label": 0}], name="d.json-array", blank=False, task="auto")
def test_json_files_load_or_fail_in_one_line(records: list[Any], name: str, blank: bool, task: str) -> None:
    if name == "d.json-array":
        content = json.dumps(records)
        name = "d.json"
    else:
        content = ("\n\n" if blank else "\n").join(json.dumps(r, ensure_ascii=False) for r in records)
    loaded = load(name, content.encode("utf-8", errors="surrogatepass"), task=task)
    if loaded is not None and loaded.kind == "classification":
        # every label came from a scalar: nested JSON values are no class names
        assert not any(n.startswith(("[", "{")) for n in loaded.label_names), loaded.label_names


def test_jsonl_keeps_a_line_separator_inside_a_string(tmp_path: Path) -> None:
    """Only a newline ends a JSON line: U+2028 (which str.splitlines would split at) is text."""
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"a\u2028b {i}", "label": i % 2} for i in range(8)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    data = load_task_data(DataConfig(dataset=str(path), test_fraction=0.25))
    assert sorted([*data.train["text"], *data.test["text"]]) == sorted(r["text"] for r in rows)


@pytest.mark.parametrize("damage", ["empty", "garbage"])
def test_a_damaged_saved_dataset_folder_fails_in_one_line(tmp_path: Path, damage: str) -> None:
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["a", "b"] * 4, "label": [0, 1] * 4}).save_to_disk(str(folder))
    for file in folder.glob("*.arrow"):
        file.write_bytes(b"" if damage == "empty" else b"\x00garbage" * 100)
    with pytest.raises(UserError, match=f"cannot read dataset {folder}") as e:
        load_task_data(DataConfig(dataset=str(folder), test_fraction=0.25))
    assert "\n" not in str(e.value)
