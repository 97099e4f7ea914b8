"""The ServerApp (`fedcustom.apps.serverapp:server_app`): the whole experiment in the ServerApp
process on the SuperLink's host (data for evaluation, checkpoints, records, the strategy), its
federated mode reaching clients through Flower's Grid (engines.flower.server.FlowerEngine).

Its run config is either fedcustom's config key by key (the Flower app project in flower-app/,
started with `flwr run`) or the whole config in one key (`fedcustom flower submit`, `fedcustom run`
with engine = "flower"): see run_config.py."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcustom.apps.run_config import app_run
from fedcustom.core.config import dumps
from fedcustom.core.errors import UserError
from fedcustom.data import load_task_data
from fedcustom.engines.flower.server import CURRENT, SIMULATION_RUN, Deployment
from fedcustom.runs.experiment import execute

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    try:
        run = app_run(dict(context.run_config) or SIMULATION_RUN, Path.cwd())
    except UserError as e:
        # The line for people; Flower then records the run as failed and logs the exception with
        # its traceback, kept to Flower's own frames and this one
        print(f"fedcustom: error: {e}", flush=True)
        raise e.with_traceback(None) from None
    text = dumps(run.cfg)
    labels = load_task_data(run.cfg.data).label_names
    token = CURRENT.set(Deployment(grid, context, text, labels))
    try:
        execute(run.cfg, run.run_dir if run.resume else None, lambda *a: print(*a, flush=True), None,
                into=None if run.resume else run.run_dir)
    finally:
        CURRENT.reset(token)
