"""[tracking]: a tiny run's TensorBoard event files and MLflow run, read back with TensorBoard's
EventAccumulator and MlflowClient and checked against the run's own records (rounds.jsonl)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from fedcustom.cli import main
from fedcustom.core.config import ConfigError, ExperimentConfig, build, dumps
from fedcustom.runs.experiment import resume_experiment, run_experiment
from fedcustom.runs.results import read_records
from fedcustom.runs.study import study_from
from fedcustom.runs.tracking import MLFLOW_RUN, flat, numbers

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402 - after the skip
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402

QUIET = {"log": lambda *_: None}
ON = {"tensorboard": True, "mlflow": True}


def scalars(run_dir: Path, mode: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the mode's TensorBoard events."""
    events = EventAccumulator(str(run_dir / "tensorboard" / mode), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def expected(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(round, value)] of every number in the records."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in numbers(record).items():
            out.setdefault(key, []).append((record["round"], value))
    return out


def mlflow_run(run_dir: Path) -> tuple[MlflowClient, Any]:
    saved = json.loads((run_dir / MLFLOW_RUN).read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def history(client: MlflowClient, run: Any, mode: str) -> dict[str, list[tuple[int, float]]]:
    keys = [k for k in run.data.metrics if k.startswith(f"{mode}/")]
    return {k.removeprefix(f"{mode}/"): sorted((m.step, m.value) for m in client.get_metric_history(
        run.info.run_id, k)) for k in keys}


def artifacts(client: MlflowClient, run_id: str, folder: str = "") -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, folder or None):
        out |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def assert_mirrors(run_dir: Path, modes: list[str]) -> None:
    """TensorBoard and MLflow hold every number of every round record, once per step."""
    client, run = mlflow_run(run_dir)
    for mode in modes:
        records = read_records(run_dir / mode)
        want = expected(records)
        assert want["test_accuracy"] and len(want) > 5  # the records do hold numbers
        tb = scalars(run_dir, mode)
        assert tb.keys() == want.keys()
        for key, points in want.items():
            assert [s for s, _ in tb[key]] == [s for s, _ in points], key  # each step once
            assert [v for _, v in tb[key]] == pytest.approx([v for _, v in points], rel=1e-6), key  # float32
        assert history(client, run, mode) == want  # MLflow keeps float64: exactly the records


def test_a_tracked_run_mirrors_its_records_config_and_files(tiny_config) -> None:
    cfg = tiny_config(modes=["federated", "centralized", "local"], tracking=ON)
    run_dir = run_experiment(cfg, **QUIET)["federated"].path.parent
    assert_mirrors(run_dir, ["federated", "centralized", "local"])

    client, run = mlflow_run(run_dir)
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "fedcustom"
    params = run.data.params
    assert params == {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat(cfg).items()}
    assert params["federation.rounds"] == "2" and params["method.name"] == "prefix"
    assert params["modes"] == '["federated", "centralized", "local"]'
    # the default store sits beside the run folder, its artifacts too (not in the working directory)
    assert (run_dir.parent / "mlflow" / "mlflow.db").is_file()
    assert run.info.artifact_uri.startswith((run_dir.parent / "mlflow" / "artifacts").absolute().as_uri())
    files = artifacts(client, run.info.run_id)
    assert {"config.toml", "partition.txt", "labels.json", "summary.txt", "federated/rounds.jsonl",
            "federated/rounds.csv", "centralized/rounds.jsonl", "local/rounds.jsonl",
            "local/clients.json"} <= files
    copy = Path(client.download_artifacts(run.info.run_id, "federated/rounds.jsonl", str(run_dir.parent)))
    assert copy.read_text() == (run_dir / "federated" / "rounds.jsonl").read_text()

    # the config as TensorBoard text and hparams, in each mode's log folder
    events = EventAccumulator(str(run_dir / "tensorboard" / "centralized"))
    events.Reload()
    [text] = events.Tensors("config/text_summary")
    assert "rounds = 2" in text.tensor_proto.string_val[0].decode()
    hparams = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["mode"].string_value == "centralized"
    assert start.hparams["federation.rounds"].number_value == 2

    # `fedcustom report RUN` adds its report and figures to the MLflow run
    from fedcustom.reporting.report import write_report

    write_report([run_dir])
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert pngs and {f"report/{name}" for name in [*pngs, "report.md"]} <= artifacts(client, run.info.run_id)


class Stop(KeyboardInterrupt):
    pass


def test_a_resumed_run_logs_each_step_once(tiny_config) -> None:
    cfg = tiny_config(federation={"rounds": 3}, tracking=ON)

    def interrupt(mode: str, record: dict[str, Any]) -> None:
        if (mode, record["round"]) == ("federated", 2):
            raise Stop

    with pytest.raises(Stop):
        run_experiment(cfg, on_record=interrupt, **QUIET)
    [run_dir] = Path(cfg.output_dir).glob("tiny-*")
    client, run = mlflow_run(run_dir)
    assert run.info.status == "KILLED"
    assert [s for s, _ in history(client, run, "federated")["test_accuracy"]] == [0, 1, 2]

    resume_experiment(run_dir, **QUIET)
    assert_mirrors(run_dir, ["federated", "centralized"])  # rounds 0-2 logged again, each step once
    # TensorBoard: the resumed event file purges the first one's steps, which stay in it
    files = sorted((run_dir / "tensorboard" / "federated").glob("events.out.tfevents.*"))
    steps = [[e.step for e in EventFileLoader(str(f)).Load()
              if any(v.tag == "test_accuracy" for v in e.summary.value)] for f in files]
    assert steps == [[0, 1, 2], [0, 1, 2, 3]]
    client, again = mlflow_run(run_dir)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"


def test_a_failing_tracker_warns_once_and_the_run_goes_on(
    tiny_config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    into = tmp_path / "run"
    into.mkdir()
    (into / "tensorboard").write_text("")  # TensorBoard cannot make its log folder
    cfg = tiny_config(modes=["federated"], tracking={**ON, "mlflow_uri": f"sqlite:///{blocker}/mlflow.db"})
    with caplog.at_level(logging.WARNING, logger="fedcustom"):
        run_experiment(cfg, into=into, **QUIET)
    warnings = [r.getMessage() for r in caplog.records if r.name == "fedcustom"]
    assert len(warnings) == 2, warnings
    assert all(w.startswith("tracking: ") and w.endswith("the run goes on without it") for w in warnings)
    assert {w.split()[1] for w in warnings} == {"TensorBoard", "MLflow"}
    assert [r["round"] for r in read_records(into / "federated")] == [0, 1, 2]
    assert (into / "summary.txt").is_file() and not (into / MLFLOW_RUN).exists()


@pytest.mark.parametrize(("key", "package"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow"),
                                              ("mlflow", "sqlalchemy")])
def test_a_missing_tracking_package_is_one_line_naming_the_extra_before_anything_loads(
    tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    key: str, package: str,
) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(dumps(tiny_config(tracking={key: True})))
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedcustom: error: tracking.{key}") and err.count("\n") == 1
    assert err.endswith(f"needs the optional package {package}: pip install 'fedcustom[tracking]'\n")
    assert not (tmp_path / "runs").exists()


def test_tracking_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^tracking.mlflow_uri = 'runs/mlflow.db': expected '' or a "
                                          r"tracking URI with a scheme"):
        build(ExperimentConfig, {"tracking": {"mlflow_uri": "runs/mlflow.db"}})
    with pytest.raises(ConfigError, match=r"^tracking.tensorboard = 'yes': expected bool$"):
        build(ExperimentConfig, {"tracking": {"tensorboard": "yes"}})
    with pytest.raises(ConfigError, match=r"^unknown key 'tracking.wandb'"):
        build(ExperimentConfig, {"tracking": {"wandb": True}})
    cfg = build(ExperimentConfig, {"tracking": {"mlflow": True, "mlflow_uri": "http://localhost:5000"}})
    assert (cfg.tracking.tensorboard, cfg.tracking.mlflow_uri) == (False, "http://localhost:5000")


def test_a_studys_tracked_runs_log_to_an_experiment_named_after_it() -> None:
    grid = {"grid": {"partition.alpha": [0.5, 1.0]}}
    study = study_from({"study": {"name": "skew"}, "base": {"tracking": {"mlflow": True}}, **grid}, "s.toml")
    assert {r.config.tracking.experiment for r in study.runs.values()} == {"skew"}
    named = {"tracking": {"mlflow": True, "experiment": "mine"}}
    study = study_from({"study": {"name": "skew"}, "base": named, **grid}, "s.toml")
    assert {r.config.tracking.experiment for r in study.runs.values()} == {"mine"}
    untracked = study_from({"study": {"name": "skew"}, **grid}, "s.toml")
    assert {r.config.tracking.experiment for r in untracked.runs.values()} == {""}
