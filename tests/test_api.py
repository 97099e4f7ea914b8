"""The Python API (docs/python.md): fedcustom.run / study / Result on tiny models, in-memory data,
and a loaded model that predicts exactly what the run measured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest
import tomli_w

import fedcustom
from fedcustom.core.config import ConfigError, ExperimentConfig, build, dumps, to_dict
from fedcustom.core.errors import UserError
from fedcustom.data import load_task_data
from fedcustom.runs import api

ROOT = Path(__file__).resolve().parents[1]


def accuracy(model: api.TrainedModel, split: datasets.Dataset, names: list[str] | None = None) -> float:
    """Accuracy of model.predict on a split (labels as names, or ids into `names`)."""
    truth = [names[y] for y in split["label"]] if names else list(split["label"])
    predicted = model.predict(split["text"])
    return sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)


@pytest.fixture
def reviews(sentiment_csv: Path) -> datasets.DatasetDict:
    """The tiny sentiment rows as in-memory train (90) and test (30) splits, in columns text/label."""
    frame = pd.read_csv(sentiment_csv).rename(columns={"review": "text", "sentiment": "label"})
    return datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame[:90]),
                                 "test": datasets.Dataset.from_pandas(frame[90:].reset_index(drop=True))})


IN_MEMORY_COLUMNS = {"text_column": "text", "label_column": "label"}


def test_import_fedcustom_loads_no_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = "import sys, fedcustom; assert 'torch' not in sys.modules, 'torch'; print(fedcustom.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    assert (fedcustom.run, fedcustom.study, fedcustom.Result) == (api.run, api.study, api.Result)
    assert {"run", "study", "Result"} <= set(dir(fedcustom))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = fedcustom.nope


def test_the_docs_example_runs(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """docs/python.md's example, as it stands, with my.toml naming the tiny model."""
    text = (ROOT / "docs" / "python.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "my.toml").write_text(tomli_w.dumps({
        "threads": 1, "model": {"name": str(tiny_model_dir), "max_length": 16},
        "partition": {"num_clients": 2}, "method": {"name": "prefix", "num_virtual_tokens": 4}}))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "docs/python.md", "exec"), scope)
    result = scope["result"]
    assert result.run_dir.parent == tmp_path / "runs" and set(result.final()) == {"federated"}
    assert [r["round"] for r in result.records["federated"]] == [0, 1, 2, 3]
    assert scope["model"].predict("a warm film") in (["pos"], ["neg"])


def test_in_memory_splits_and_a_model_that_predicts_what_the_run_measured(tiny_config, reviews) -> None:
    result = fedcustom.run(to_dict(tiny_config(data=IN_MEMORY_COLUMNS)), data=reviews)
    run_dir = result.run_dir
    assert 'dataset = "<in-memory>"' in (run_dir / "config.toml").read_text()
    assert json.loads((run_dir / "labels.json").read_text()) == {"task": "classification",
                                                                 "labels": ["neg", "pos"]}
    assert re.search(r"total +90 ", (run_dir / "partition.txt").read_text())  # the train split, whole
    loaded = fedcustom.Result.load(run_dir)
    assert loaded.records == result.records and to_dict(loaded.config) == to_dict(result.config)
    final = result.final()
    assert set(final) == {"federated", "centralized"}
    for mode in final:
        model = result.model(mode)
        assert not model.module.training and model.labels == ["neg", "pos"]
        # the run's own evaluation of its final state, bit for bit
        assert accuracy(model, reviews["test"]) == final[mode] == result.records[mode][-1]["test_accuracy"]
    assert result.final("test_loss").keys() == final.keys()


def test_a_config_object_with_overrides_and_a_run_folder_without_labels_json(tiny_config) -> None:
    cfg = tiny_config()
    result = fedcustom.run(cfg, federation__rounds=1, modes=["federated"])
    assert result.config.federation.rounds == 1 and list(result.records) == ["federated"]
    data = load_task_data(cfg.data)
    expected = accuracy(result.model(), data.test, data.label_names)
    assert expected == result.final()["federated"]
    (result.run_dir / "labels.json").unlink()  # a folder from before labels.json: the data is read
    assert accuracy(fedcustom.Result.load(result.run_dir).model(), data.test, data.label_names) == expected


def test_config_forms_and_override_errors(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config()
    path = tmp_path / "c.toml"
    path.write_text(dumps(cfg))
    assert api.make_config(None, {}) == ExperimentConfig()
    assert api.make_config(cfg, {}) is cfg
    from_file = api.make_config(path, {"federation__rounds": 7, "output_dir": tmp_path / "out"})
    from_dict = api.make_config({**to_dict(cfg), "output_dir": tmp_path / "out"}, {"federation__rounds": 7})
    from_obj = api.make_config(cfg, {"federation__rounds": 7, "output_dir": str(tmp_path / "out")})
    assert from_file == from_dict == from_obj
    assert from_file.federation.rounds == 7 and from_file.output_dir == str(tmp_path / "out")
    lora = api.make_config(cfg, {"method": {"name": "lora", "rank": 2}})
    assert lora.method.name == "lora" and lora.method.options.rank == 2
    with pytest.raises(ConfigError, match="unknown key 'federation.roundz'"):
        api.make_config(cfg, {"federation__roundz": 1})
    with pytest.raises(ConfigError, match="seed__x=1: 'seed' is not a table"):
        api.make_config(cfg, {"seed__x": 1})
    with pytest.raises(UserError, match="config: expected an ExperimentConfig, a dict, .* got int"):
        fedcustom.run(3)
    with pytest.raises(ConfigError, match="config file not found: nowhere.toml"):
        fedcustom.run("nowhere.toml")


@pytest.mark.parametrize(("data", "engine", "message"), [
    ("a-list", "simulation", r"^data: expected a datasets.Dataset or DatasetDict, got list$"),
    ("one", "simulation", r"^data: no text column 'text' \(columns: review, sentiment\); set data.text_col"),
    ("no-test", "simulation", r"^data: a DatasetDict with splits \['train'\]; expected 'train' and 'test'"),
    ("extra", "simulation", r"^data: a DatasetDict with splits \['test', 'train', 'unsupervised'\]"),
    ("test-no-label", "simulation", r"^data\['test'\]: no label column 'label' \(columns: text\); set data"),
    ("one", "flower", r"^data= trains in this process; engine 'flower' starts its own clients"),
])
def test_bad_data_fails_in_one_line_before_anything_is_written(
        data, engine, message, tiny_config, reviews, sentiment_csv: Path) -> None:
    if engine == "flower":
        pytest.importorskip("flwr")
    cfg = tiny_config(engine=engine, data=IN_MEMORY_COLUMNS)
    data = {
        "a-list": lambda: [1, 2],
        "one": lambda: datasets.Dataset.from_pandas(pd.read_csv(sentiment_csv)),
        "no-test": lambda: datasets.DatasetDict({"train": reviews["train"]}),
        "extra": lambda: datasets.DatasetDict({**reviews, "unsupervised": reviews["test"]}),
        "test-no-label": lambda: datasets.DatasetDict({"train": reviews["train"],
                                                       "test": reviews["test"].remove_columns("label")}),
    }[data]()
    with pytest.raises(UserError, match=message) as error:
        fedcustom.run(cfg, data=data)
    assert "\n" not in str(error.value)
    assert not Path(cfg.output_dir).exists()


def test_a_dataset_is_split_by_test_fraction_a_dataset_dict_keeps_its_splits(tiny_config, reviews) -> None:
    from fedcustom.data.memory import from_datasets

    cfg = tiny_config(data={**IN_MEMORY_COLUMNS, "validation_fraction": 0.1}).data
    whole = from_datasets(datasets.concatenate_datasets([reviews["train"], reviews["test"]]), cfg)
    assert (len(whole.train), len(whole.validation), len(whole.test)) == (81, 9, 30)  # test_fraction 0.25
    given = from_datasets(reviews, cfg)
    assert (len(given.train), len(given.validation), len(given.test)) == (81, 9, 30)
    assert sorted(given.test["text"]) == sorted(reviews["test"]["text"])
    with_val = from_datasets(datasets.DatasetDict({**reviews, "validation": reviews["test"]}), cfg)
    assert (len(with_val.train), len(with_val.validation)) == (90, 30)


def test_what_a_run_has_no_model_for(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config()
    result = api.Result(tmp_path, cfg, {"federated": [{"round": 0, "test_accuracy": 0.5}]})
    assert result.final() == {"federated": 0.5}
    with pytest.raises(UserError, match="has 'nope'; recorded: round, test_accuracy"):
        result.final("nope")
    with pytest.raises(UserError, match="mode 'local' has no single model"):
        result.model("local")
    with pytest.raises(UserError, match="mode 'centralized' has no final state"):
        result.model("centralized")
    distill = build(ExperimentConfig, {**to_dict(cfg), "method": {"name": "distill"},
                                       "strategy": {"name": "consensus"}})
    (tmp_path / "federated").mkdir()
    (tmp_path / "federated" / "state.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="method 'distill': the server model is not loaded"):
        api.Result(tmp_path, distill, {}).model()


def test_study(tiny_config, tmp_path: Path) -> None:
    base = to_dict(tiny_config(modes=["federated"]))
    base.pop("name")
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps({"study": {"name": "s"}, "base": base,
                                   "grid": {"method.num_virtual_tokens": [2]}}))
    out = fedcustom.study(path, base__federation__rounds=1, base__output_dir=tmp_path / "studies")
    assert out == tmp_path / "studies" / "s" and (out / "study.json").is_file()
    (run_dir,) = (out / "runs").iterdir()
    assert [r["round"] for r in fedcustom.Result.load(run_dir).records["federated"]] == [0, 1]


def test_a_generation_model_generates_as_fedcustom_generate_does(tiny_lm_config, pairs_jsonl: Path) -> None:
    from fedcustom.commands.generate import generate

    result = fedcustom.run(tiny_lm_config(), federation__rounds=1, modes=["federated"],
                           generation__eval_examples=1, generation__show_examples=1)
    model = result.model()
    assert model.task == "generation"
    prompt = json.loads(pairs_jsonl.read_text().splitlines()[0])["prompt"]
    assert model.predict([prompt]) == [generate(result.run_dir / "federated", prompt)]
