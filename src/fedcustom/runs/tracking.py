"""Experiment tracking (`[tracking]`): the run's round records mirrored into TensorBoard event files
and an MLflow run, for the tools people already browse results with.

The run folder stays the result: tracking only copies what its records say, and never stops a run.
A tracker that fails logs one warning and is switched off; the run goes on without it.

- TensorBoard: RUN/tensorboard/MODE, one log folder per mode (so `tensorboard --logdir RUN` draws
  the modes as separate runs on the same charts). Every number of a round record is a scalar with
  step = round; the config is a text summary and hparams (with `mode`).
- MLflow: one MLflow run per run folder, named after it, in the experiment `tracking.experiment`
  (a study sets its name; else "fedcustom"). Metrics `MODE/KEY` with step = round, the config as
  params with dotted keys, and at the end the run folder's config, partition, summary and each
  mode's records as artifacts (`fedcustom report RUN` adds its figures). The default store is a
  SQLite file beside the run folder, OUTPUT_DIR/mlflow/mlflow.db, with artifacts in
  OUTPUT_DIR/mlflow/artifacts. The run folder's mlflow.json names the MLflow run.

Resume (`fedcustom run --resume`): a mode goes on from its checkpoint, whose records are logged
again first. MLflow reattaches the run of mlflow.json and skips the (metric, step) pairs it already
holds, so no step is duplicated. TensorBoard opens a new event file that starts with a purge at
the first step it writes, so the events of the interrupted file from that step on are hidden (by
TensorBoard and EventAccumulator) and each step reads once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fedcustom.core import extras
from fedcustom.core.config import ExperimentConfig, TrackingConfig, dumps, to_dict
from fedcustom.core.io import atomic_write
from fedcustom.core.log import logger

MLFLOW_RUN = "mlflow.json"  # in the run folder: which MLflow run mirrors it
DEFAULT_EXPERIMENT = "fedcustom"
RUN_FILES = ("config.toml", "partition.txt", "labels.json", "summary.txt")
MODE_FILES = ("rounds.jsonl", "rounds.csv", "clients.json")
REPORT = "report"  # artifact folder of `fedcustom report`'s figures


def needs(cfg: TrackingConfig) -> list[tuple[str, str]]:
    """(optional package, the key that needs it) for what `cfg` switches on."""
    out = [("tensorboard", "tracking.tensorboard")] if cfg.tensorboard else []
    if cfg.mlflow:
        out.append(("mlflow", "tracking.mlflow"))
        if cfg.mlflow_uri == "" or cfg.mlflow_uri.startswith("sqlite:"):  # MLflow's SQL store
            out += [("sqlalchemy", "tracking.mlflow (a SQLite store)"),
                    ("alembic", "tracking.mlflow (a SQLite store)")]
    return out


def check(cfg: ExperimentConfig) -> None:
    """Fail in one line naming the extra if a tracker's package is missing (before anything loads).
    Checked where a run starts, not when a config is built: Flower's client nodes and a finished
    run loaded for a report or for generation build the config too, and never track."""
    for module, what in needs(cfg.tracking):
        extras.check((module,), what)


def with_experiment(raw: dict[str, Any], name: str) -> None:
    """A study's runs log to the experiment named after the study, unless the config names one."""
    tracking = raw.get("tracking")
    if isinstance(tracking, dict) and (tracking.get("mlflow") or tracking.get("tensorboard")):
        tracking.setdefault("experiment", name)


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The record's numeric values (not the round itself, not flags, lists or text)."""
    return {k: float(v) for k, v in record.items()
            if k != "round" and isinstance(v, int | float) and not isinstance(v, bool)}


def flat(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as dotted keys; lists as JSON text."""
    out: dict[str, Any] = {}

    def walk(table: dict[str, Any], prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = json.dumps(value) if isinstance(value, list) else value

    walk(to_dict(cfg), "")
    return out


def first_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class TensorBoard:
    name = "TensorBoard"

    def __init__(self, cfg: ExperimentConfig, run_dir: Path) -> None:
        extras.require("tensorboard", "tracking.tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.Writer = SummaryWriter
        self.cfg, self.root = cfg, run_dir / "tensorboard"
        self.writers: dict[str, Any] = {}

    def writer(self, mode: str, step: int, metrics: dict[str, float]) -> Any:
        if mode in self.writers:
            return self.writers[mode]
        from torch.utils.tensorboard.summary import hparams

        folder = self.root / mode
        # events already there: a resumed run; everything from `step` on is written again
        resumed = folder.is_dir() and any(folder.iterdir())
        writer = self.Writer(str(folder), purge_step=step if resumed else None)
        writer.add_text("config", "\n".join("    " + line for line in dumps(self.cfg).splitlines()), step)
        params = {k: v for k, v in flat(self.cfg).items() if v is not None} | {"mode": mode}
        headline = {k: 0.0 for k in metrics if k.startswith(("test_", "val_"))}  # tags of this run
        for summary in hparams(params, headline):
            writer.file_writer.add_summary(summary, step)
        self.writers[mode] = writer
        return writer

    def log(self, mode: str, step: int, metrics: dict[str, float]) -> None:
        writer = self.writer(mode, step, metrics)
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def close(self, run_dir: Path, status: str) -> None:
        for writer in self.writers.values():
            writer.close()


def store(cfg: TrackingConfig, run_dir: Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location of a new experiment; None: the server's default)."""
    if cfg.mlflow_uri == "":
        folder = (run_dir.parent / "mlflow").absolute()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
    if cfg.mlflow_uri.startswith("sqlite:///") and cfg.mlflow_uri != "sqlite:///:memory:":
        db = Path(cfg.mlflow_uri.removeprefix("sqlite:///")).absolute()
        db.parent.mkdir(parents=True, exist_ok=True)  # artifacts beside the database, not in the cwd
        return f"sqlite:///{db}", (db.parent / "artifacts").as_uri()
    return cfg.mlflow_uri, None


def mlflow_client(uri: str) -> Any:
    mlflow = extras.require("mlflow", "tracking.mlflow")
    return mlflow.MlflowClient(tracking_uri=uri)


class MLflow:
    name = "MLflow"

    def __init__(self, cfg: ExperimentConfig, run_dir: Path) -> None:
        from mlflow.entities import Param

        uri, artifacts = store(cfg.tracking, run_dir)
        self.client = client = mlflow_client(uri)
        self.run_id = self.reattach(run_dir, uri)
        self.resumed = self.run_id is not None
        self.logged: dict[str, set[int]] = {}  # metric -> steps in the store (a resumed run only)
        if self.run_id is None:
            experiment = cfg.tracking.experiment or DEFAULT_EXPERIMENT
            found = client.get_experiment_by_name(experiment)
            experiment_id = (found.experiment_id if found is not None
                             else client.create_experiment(experiment, artifact_location=artifacts))
            run = client.create_run(experiment_id, run_name=run_dir.name,
                                    tags={"fedcustom.run_dir": str(run_dir.absolute())})
            self.run_id = run.info.run_id
            atomic_write(run_dir / MLFLOW_RUN, json.dumps(
                {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id}) + "\n")
        else:
            client.update_run(self.run_id, status="RUNNING")
        # the same config gives the same params: logging them again on resume is harmless
        params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:6000]) for k, v in flat(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            client.log_batch(self.run_id, params=params[i:i + 100])

    def reattach(self, run_dir: Path, uri: str) -> str | None:
        """The MLflow run of an earlier start of this run folder, if it is still in the store."""
        path = run_dir / MLFLOW_RUN
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        if saved.get("tracking_uri") != uri:
            return None
        try:
            run = self.client.get_run(saved["run_id"])
        except Exception:  # noqa: BLE001 - MLflow says "not found" in several ways
            return None
        return str(saved["run_id"]) if run.info.lifecycle_stage == "active" else None

    def new(self, key: str, step: int) -> bool:
        if not self.resumed:
            return True
        if key not in self.logged:
            self.logged[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return step not in self.logged[key]

    def log(self, mode: str, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        keys = {f"{mode}/{k}": v for k, v in metrics.items()}
        batch = [Metric(key, v, now, step) for key, v in keys.items() if self.new(key, step)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self, run_dir: Path, status: str) -> None:
        if status == "FINISHED":
            for name in RUN_FILES:
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
            for mode in sorted(p.name for p in run_dir.iterdir() if (p / "rounds.jsonl").is_file()):
                for name in MODE_FILES:
                    if (run_dir / mode / name).is_file():
                        self.client.log_artifact(self.run_id, str(run_dir / mode / name), mode)
        self.client.set_terminated(self.run_id, status)


class Tracker:
    """The trackers `[tracking]` switches on; each failure switches one off with one warning."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.backends: list[Any] = []
        for on, kind in ((cfg.tracking.tensorboard, TensorBoard), (cfg.tracking.mlflow, MLflow)):
            if on:
                try:
                    self.backends.append(kind(cfg, run_dir))
                except Exception as e:  # noqa: BLE001 - tracking never stops a run
                    self.warn(kind.name, "could not start", e)

    def warn(self, name: str, what: str, error: Exception) -> None:
        logger.warning(f"tracking: {name} {what} ({first_line(error)}); the run goes on without it")

    def each(self, what: str, call: Any) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as e:  # noqa: BLE001 - tracking never stops a run
                self.backends.remove(backend)
                self.warn(backend.name, what, e)

    def log(self, mode: str, record: dict[str, Any]) -> None:
        """One round record of `mode` (step = its round)."""
        metrics = numbers(record)
        self.each("failed", lambda b: b.log(mode, int(record["round"]), metrics))

    def close(self, status: str = "FINISHED") -> None:
        """FINISHED (the run folder's files become artifacts), FAILED or KILLED."""
        self.each("failed at the end", lambda b: b.close(self.run_dir, status))
        self.backends = []


def log_report(run_dir: Path, files: list[Path]) -> None:
    """Add `fedcustom report`'s files (report.md, figures) to the MLflow run of `run_dir`, if the run
    was tracked there (its mlflow.json); a failure is one warning."""
    path = run_dir / MLFLOW_RUN
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
        client = mlflow_client(saved["tracking_uri"])
        for file in files:
            client.log_artifact(saved["run_id"], str(file), REPORT)
    except Exception as e:  # noqa: BLE001 - a report never fails for its copy in MLflow
        logger.warning(f"tracking: MLflow did not get the report ({first_line(e)})")
