"""Config building and the one-line errors people see for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcustom.cli import main
from fedcustom.core.config import (
    ConfigError,
    ExperimentConfig,
    PartitionConfig,
    build,
    describe,
    dumps,
    load_config,
    read_toml,
)
from fedcustom.core.errors import UserError


def test_defaults_build_and_round_trip_through_toml(tmp_path: Path) -> None:
    cfg = load_config(None, ["federation.rounds=7", "method.num_virtual_tokens=8",
                             "partition.scheme=dirichlet", "modes=['federated', 'centralized']"])
    assert cfg.federation.rounds == 7
    assert cfg.method.options.num_virtual_tokens == 8
    assert cfg.partition.scheme == "dirichlet"
    path = tmp_path / "c.toml"
    path.write_text(dumps(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"federation": {"roundz": 3}}, "unknown key 'federation.roundz'"),
        ({"federation": {"rounds": "3"}}, "federation.rounds = '3': expected int"),
        ({"federation": {"rounds": 0}}, "federation.rounds = 0: expected an integer >= 1"),
        ({"federation": {"fraction_fit": 1.5}}, "fraction_fit = 1.5: expected a number in (0, 1]"),
        ({"partition": {"alpha": 0.0}}, "partition.alpha = 0.0: expected a number > 0"),
        ({"partition": {"num_clients": 0}}, "partition.num_clients = 0"),
        ({"partition": {"scheme": "zipf"}},
         "partition.scheme = 'zipf': expected one of ['iid', 'dirichlet', 'dirichlet-balanced', 'shard']"),
        ({"method": {"name": "nope"}}, "unknown method 'nope'; expected one of: "),
        ({"method": {"name": "prefix", "rank": 8}}, "unknown key 'method.rank'"),
        ({"strategy": {"name": "fedavg", "momentum": 1.0}}, "strategy.momentum = 1.0"),
        ({"modes": ["federated", "solo"]}, "modes"),
        ({"engine": "ray"}, "engine = 'ray'"),
        ({"train": 3}, "'train' must be a table"),
        ({"train": {"lr": float("inf")}}, "train.lr = inf: expected a finite number"),
        ({"strategy": {"name": "fedavg", "server_lr": float("nan")}}, "expected a finite number"),
    ],
)
def test_bad_values_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        build(ExperimentConfig, raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_partition_scheme_builds_and_its_help_says_what_it_does() -> None:
    for scheme in ("iid", "dirichlet", "dirichlet-balanced", "shard"):
        assert build(ExperimentConfig, {"partition": {"scheme": scheme}}).partition.scheme == scheme
    help_text = {key: text for key, _, text in describe(PartitionConfig)}["scheme"]
    assert "dirichlet-balanced (Dirichlet(alpha) on the label, client sizes kept equal)" in help_text


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nrounds = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        read_toml(tmp_path / "missing.toml")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_config(None, ["rounds"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "federation.rounds=-1"], "federation.rounds = -1"),
        (["--set", "data.dataset=no-such-data"], "unknown dataset 'no-such-data'"),
        (["--set", "model.name=/no/such/model"], "model path not found: /no/such/model"),
        (["--set", "method.name=nope"], "unknown method 'nope'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(f'output_dir = "{tmp_path / "runs"}"\n[data]\nmax_train_examples = 50\n')
    assert main(["run", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("fedcustom: error:")
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(p.is_file() for p in runs.rglob("*"))


def test_csv_without_named_column_is_a_one_line_error(
    tmp_path: Path, sentiment_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(f'output_dir = "{tmp_path / "runs"}"\n'
                      f'[data]\ndataset = "{sentiment_csv}"\ntext_column = "body"\n')
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "body" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
