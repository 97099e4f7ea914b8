"""The ServerApp (`fedcustom.apps.serverapp:server_app`): the whole experiment in the ServerApp
process on the SuperLink's host (data for evaluation, checkpoints, records, the strategy), its
federated mode reaching clients through Flower's Grid (engines.flower.server.FlowerEngine)."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcustom.core.errors import UserError
from fedcustom.data import load_task_data
from fedcustom.engines.flower.client import config_from_text
from fedcustom.engines.flower.server import CURRENT, SIMULATION_RUN, Deployment
from fedcustom.runs.experiment import execute

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run config: `experiment` (the config TOML), `run-dir` (where results go on this host) and
    `resume` (go on from the checkpoints in run-dir)."""
    settings = dict(context.run_config) or SIMULATION_RUN
    run_dir, text = Path(str(settings["run-dir"])), str(settings["experiment"])
    resume = bool(settings.get("resume", False))
    if resume:
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"resume: {run_dir} on the SuperLink's host is not a fedcustom run folder")
        text = (run_dir / "config.toml").read_text()  # a run goes on with its saved config
    cfg = config_from_text(text)
    labels = load_task_data(cfg.data).label_names
    token = CURRENT.set(Deployment(grid, context, text, labels))
    try:
        execute(cfg, run_dir if resume else None, lambda *a: print(*a, flush=True), None,
                into=None if resume else run_dir)
    finally:
        CURRENT.reset(token)


