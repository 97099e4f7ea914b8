"""A whole Flower federation on this machine: a SuperLink and one SuperNode per client on
loopback, each with its partition of the configured dataset, for `fedcustom run` with
engine = "flower" and the tests. The commands are deploy.py's, as on separate hosts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedcustom.core.config import ExperimentConfig, dumps
from fedcustom.core.errors import UserError
from fedcustom.core.io import new_run_dir
from fedcustom.engines.flower.credentials import make_node_key
from fedcustom.engines.flower.deploy import (
    Security,
    flower_env,
    register_node,
    site_commands,
    submit,
    superlink_command,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalDeployment:
    """A SuperLink and one SuperNode per client on loopback; stop() ends every process, also when
    the caller fails (use it as a context manager)."""

    num_clients: int
    workdir: Path
    security: Security = field(default_factory=lambda: Security(insecure=True))
    node_auth: bool = False  # admit only SuperNodes whose keys were registered
    isolation: str = "process"  # deploy.ISOLATION_MODES
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=flower_env(self.home),
                                start_new_session=True)
        self.processes[name] = proc
        return proc

    def start(self) -> LocalDeployment:
        self.spawn("superlink", superlink_command(self.port, "127.0.0.1", self.security, self.node_auth))
        self.wait_for_port()
        for cid in range(self.num_clients):
            self.start_supernode(cid)
        return self

    def start_supernode(self, cid: int) -> None:
        key = None
        if self.node_auth:

            key, public = make_node_key(self.workdir / "keys", f"client-{cid}")
            register_node(public, self.superlink, self.security, self.home)
        self.spawn(f"supernode-{cid}", site_commands(self.superlink, cid, self.security, free_port(),
                                                     auth_key=key, isolation=self.isolation))

    def wait_for_port(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["superlink"].poll() is not None:
                raise RuntimeError(f"flower-superlink exited: see {self.workdir}/superlink.log")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not open port {self.port} in {timeout:.0f} s")

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything it started: Flower starts its SuperExec, ServerApp and
        ClientApp processes detached, so they are found as descendants, not by process group."""
        import psutil

        proc = self.processes.pop(name)
        with contextlib.suppress(psutil.NoSuchProcess):
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for member in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def submit(self, config_text: str, run_dir: Path, resume: bool = False,
               timeout: float | None = None) -> str:
        return submit(config_text, run_dir, self.superlink, self.security, resume, self.home, timeout)

    def stop(self) -> None:
        for name in list(self.processes):
            self.kill(name)

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_local(cfg: ExperimentConfig, resume_dir: Path | None = None) -> Path:
    """`fedcustom run` with engine = "flower": the whole federation on this machine (loopback, one
    SuperNode per client), the run folder written as by the in-process engine."""

    run_dir = resume_dir or new_run_dir(cfg.output_dir, cfg.name)
    with tempfile.TemporaryDirectory(prefix="fedcustom-flower-") as tmp, \
            LocalDeployment(cfg.partition.num_clients, Path(tmp)) as federation:
        print(f"flower: SuperLink on {federation.superlink}, {cfg.partition.num_clients} SuperNodes "
              f"(logs in {tmp} while it runs)", flush=True)
        status = federation.submit(dumps(cfg), run_dir, resume=resume_dir is not None)
    if status != "finished:completed":
        raise UserError(f"the Flower run ended as '{status}'; what was done is in {run_dir} "
                        f"(fedcustom run --resume {run_dir} goes on from its last checkpoint)")
    return run_dir
