"""The Flower app project (flower-app/) with Flower's own CLI: `flwr run` against a SuperLink and two
SuperNodes on loopback, its run config fedcustom's config key by key; and, without processes, how a
run config becomes an experiment (overrides, lists, one-line errors, the single-key bundle)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from test_flower import assert_same_run, in_process, records

from fedcustom.apps.run_config import app_run
from fedcustom.core.config import ConfigError, dumps, load_config, to_dict
from fedcustom.core.errors import UserError
from fedcustom.engines.flower.deploy import flower_bin, flower_env, write_connection
from fedcustom.engines.flower.loopback import LocalDeployment

APP = Path(__file__).resolve().parent.parent / "flower-app"
DEMO = Path(__file__).resolve().parent.parent / "src" / "fedcustom" / "configs" / "demo.toml"
# the demo scaled to a trial on one machine; the app's own keys; paths on the SuperLink's host
SCALED = {"modes", "partition.num_clients", "data.max_train_examples", "data.max_test_examples",
          "federation.rounds"}
APP_KEYS = {"run-dir", "resume", "output_dir"}


def app_defaults() -> dict[str, Any]:
    """The app's run config as Flower flattens it: dotted keys."""
    config = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return flatten(config)


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def test_flwr_run_with_the_app_project_on_loopback(tiny_model_dir: Path, sentiment_csv: Path,
                                                   tmp_path: Path) -> None:
    """Flower's CLI submits the app with overrides; the ServerApp writes a run folder under
    output_dir whose config and records follow them, with the in-process engine's numbers. The
    sites (fedcustom's executor) build their model once and keep it between rounds."""
    overrides = (f'name="flwr-app" output_dir="{tmp_path / "runs"}" threads=1 '
                 f'model.name="{tiny_model_dir}" model.max_length=16 data.dataset="{sentiment_csv}" '
                 'data.text_column="review" data.label_column="sentiment" data.test_fraction=0.25 '
                 'partition.scheme="iid" train.lr=0.05 train.lr_schedule="constant" federation.rounds=2 '
                 'flower.round_timeout=300.0')
    with LocalDeployment(2, tmp_path / "deploy") as federation:
        write_connection(federation.home, federation.superlink, federation.security)  # named "fedcustom"
        flwr = subprocess.run([flower_bin("flwr"), "run", str(APP), "fedcustom", "--stream",
                               "--run-config", overrides],
                              env=flower_env(federation.home), capture_output=True, text=True, timeout=600,
                              check=False)
    log = flwr.stdout + flwr.stderr
    assert flwr.returncode == 0, log[-3000:]
    assert "Successfully started run" in log, log[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("flwr-app-") and f"run folder: {run_dir}" in log
    assert [r["round"] for r in records(run_dir)] == [0, 1, 2]
    assert all(r["accepted"] == 2 for r in records(run_dir)[1:])
    saved = load_config(run_dir / "config.toml")
    assert (saved.engine, saved.federation.rounds, saved.train.lr, saved.train.lr_schedule) == (
        "flower", 2, 0.05, "constant")
    assert (saved.partition.num_clients, saved.method.name, saved.train.batch_size) == (2, "prefix", 32)
    assert_same_run(run_dir, in_process(saved, tmp_path / "sim"))
    for cid in (0, 1):  # each site built its model once and kept it for both rounds
        log = (tmp_path / "deploy" / f"supernode-{cid}.log").read_text(errors="replace")
        assert log.count("site: built the clients of run") == 1, log[-3000:]
        assert log.count("(train) served in") == 2, log[-3000:]


# --- fast checks: no processes ------------------------------------------------------------------

def test_the_app_project_is_a_valid_flower_app_with_the_demo_defaults() -> None:
    from flwr.common.config import validate_config

    pyproject = tomllib.loads((APP / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(pyproject, check_module=True, project_dir=APP)
    assert ok, errors
    assert "federations" not in pyproject["tool"]["flwr"]  # connections live in FLWR_HOME/config.toml
    defaults = app_defaults()
    demo = flatten(to_dict(load_config(DEMO)))
    differ = {k: (v, demo[k]) for k, v in defaults.items()
              if k not in SCALED | APP_KEYS and v != demo[k]}
    assert not differ, differ
    cfg = app_run(defaults, Path("/srv")).cfg
    assert (cfg.modes, cfg.partition.num_clients, cfg.engine, cfg.output_dir) == (
        ("federated",), 2, "flower", "/srv/runs")


def test_run_config_keys_override_the_app_defaults(tmp_path: Path) -> None:
    overrides = {"train.lr": 1, "federation.rounds": 2, "modes": "federated, centralized",
                 "method.name": "lora", "method.target_modules": "query,value", "run-dir": "here"}
    run = app_run({**app_defaults(), **overrides}, tmp_path)
    cfg = run.cfg
    assert (cfg.train.lr, cfg.federation.rounds, cfg.modes) == (1.0, 2, ("federated", "centralized"))
    assert (cfg.method.name, cfg.method.options.target_modules) == ("lora", ("query", "value"))
    assert (run.run_dir, run.resume) == (tmp_path / "here", False)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.lrr", 0.1, "unknown key 'train.lrr'; expected one of: lr, "),
    ("train.lr", -1.0, r"train.lr = -1.0: expected a number > 0"),
    ("partition.scheme", "zipf", r"partition.scheme = 'zipf': expected one of \['iid'"),
    ("method.name", "nope", "unknown method 'nope'; expected one of: "),
    ("engine", "simulation", "engine = 'simulation': a Flower app runs on engine 'flower'"),
    ("resume", True, "resume = true needs run-dir"),
    ("resume", "yes", "resume = 'yes': expected true or false"),
])
def test_a_bad_run_config_key_is_a_one_line_error(key: str, value: Any, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        app_run({**app_defaults(), key: value}, Path("/srv"))
    assert "\n" not in str(error.value)


def test_the_single_key_bundle_still_runs_as_before(tiny_config, tmp_path: Path) -> None:
    """`fedcustom flower submit` and engine = "flower" send the whole config in `experiment`."""
    cfg = tiny_config(engine="flower")
    run = app_run({"experiment": dumps(cfg), "run-dir": str(tmp_path / "run"), "resume": False}, Path("/srv"))
    assert (run.cfg, run.run_dir, run.resume) == (cfg, tmp_path / "run", False)
    with pytest.raises(UserError, match="is not a fedcustom run folder"):
        app_run({"experiment": "", "run-dir": str(tmp_path / "run"), "resume": True}, Path("/srv"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text(dumps(cfg))
    resumed = app_run({"experiment": "", "run-dir": str(tmp_path / "run"), "resume": True,
                       "train.lr": 9.0}, Path("/srv"))
    assert (resumed.cfg, resumed.resume) == (cfg, True)  # the saved config; other keys are not read
    with pytest.raises(ConfigError, match="experiment: invalid TOML"):
        app_run({"experiment": "name = ["}, Path("/srv"))
