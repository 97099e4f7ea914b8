"""Starting Flower's deployment processes and submitting a run to them.

A federation is one `flower-superlink` (it also runs the ServerApp, in a subprocess) and one
`flower-supernode` per client site; `flwr run` submits an app to the SuperLink. fedcustom's app is
the installed package itself (`fedcustom.engines.flower.server`), so the app bundle is only a
pyproject.toml whose run config carries the experiment config, and Flower never installs
dependencies at run time: every host runs the same installed fedcustom.

A site is a SuperNode in Flower's `--isolation process` mode plus fedcustom's executor
(executor.py), one long-lived process that runs all of the SuperNode's ClientApp messages and so
keeps the site's model loaded between rounds. `--isolation subprocess` is Flower's default: a fresh
ClientApp process, imports and model build for every message (slower, kept as the fallback).

loopback.py starts a whole federation on this machine with these commands.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedcustom.core.errors import UserError
from fedcustom.engines.flower.executor import runtime_address, site_command

APP_ID = "fedcustom"
SERVER_APP = "fedcustom.apps.serverapp:server_app"
CLIENT_APP = "fedcustom.apps.clientapp:client_app"
# how a SuperNode runs ClientApp messages: "process", all in fedcustom's long-lived executor (the
# model stays loaded); "subprocess", Flower's default, a fresh process for each message
ISOLATION_MODES = ("process", "subprocess")


def load_app(reference: str) -> Any:
    """A Flower app from its `module:attribute` reference, as Flower itself loads apps."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def flower_bin(name: str) -> str:
    """Flower's console scripts live beside this interpreter (a venv's bin/), or on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise UserError(f"'{name}' not found: install flwr in this environment")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Flower's processes start each other by name (flower-superexec, flwr-serverapp): put this
    interpreter's scripts first on PATH so they are the ones beside fedcustom."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "FLWR_HOME": str(flwr_home)}


@dataclass(frozen=True)
class Security:
    """TLS for every connection. Secure by default: running without it must be asked for.

    `certificates` is a folder made by `fedcustom flower certificates`: the SuperLink needs all of
    it (ca.crt, server.pem, server.key); SuperNodes and submitters only ca.crt."""

    insecure: bool = False
    certificates: Path | None = None

    def check(self, server: bool = False) -> Security:
        if self.insecure:
            return self
        if self.certificates is None:
            raise UserError("TLS needs --certificates DIR (made by `fedcustom flower certificates`); "
                            "--insecure runs without TLS (local tests only)")
        for name in ("ca.crt", "server.pem", "server.key") if server else ("ca.crt",):
            if not (self.certificates / name).is_file():
                raise UserError(f"{self.certificates}/{name} not found: run `fedcustom flower certificates`")
        return self

    @property
    def ca(self) -> str:
        return str(self.certificates / "ca.crt")  # type: ignore[operator]


def superlink_command(port: int, host: str, security: Security, auth: bool = False,
                      database: Path | None = None) -> list[str]:
    cmd = [flower_bin("flower-superlink"), "--disable-runtime-dependency-installation",
           "--host", host, "--port", str(port)]
    if security.insecure:
        cmd.append("--insecure")
    else:
        certs = security.certificates
        cmd += ["--ssl-ca-certfile", security.ca, "--ssl-certfile", str(certs / "server.pem"),  # type: ignore[operator]
                "--ssl-keyfile", str(certs / "server.key")]  # type: ignore[operator]
    if auth:
        cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def supernode_command(superlink: str, client_id: int, security: Security, port: int,
                      data_path: Path | None = None, auth_key: Path | None = None,
                      isolation: str = "subprocess") -> list[str]:
    """The `flower-supernode` command alone. With isolation "process" it runs no ClientApp by
    itself: `site_command` adds the executor that does."""
    node_config = f"client-id={client_id}"
    if data_path is not None:
        node_config += f' data-path="{data_path.resolve()}"'
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink, "--port", str(port),
           "--node-config", node_config, "--isolation", isolation]
    cmd += ["--insecure"] if security.insecure else ["--root-certificates", security.ca]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    return cmd


def site_commands(superlink: str, client_id: int, security: Security, port: int,
                  data_path: Path | None = None, auth_key: Path | None = None,
                  isolation: str = "process") -> list[str]:
    """A whole client site as one command: with isolation "process", fedcustom's executor then the
    SuperNode (one process tree); with "subprocess", the SuperNode alone."""
    if isolation not in ISOLATION_MODES:
        raise UserError(f"isolation = {isolation!r}: expected one of {list(ISOLATION_MODES)}")
    supernode = supernode_command(superlink, client_id, security, port, data_path, auth_key, isolation)
    return site_command(runtime_address(port), supernode) if isolation == "process" else supernode


def register_node(public_key: Path, superlink: str, security: Security,
                  flwr_home: Path | None = None) -> None:
    """Admit a SuperNode's public key at a SuperLink started with node authentication."""
    with tempfile.TemporaryDirectory(prefix="fedcustom-flwr-") as tmp:
        home = flwr_home or Path(tmp)
        write_connection(home, superlink, security)
        proc = subprocess.run([flower_bin("flwr"), "supernode", "register", str(public_key), "fedcustom"],
                              env=flower_env(home), capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise UserError(f"registering {public_key} failed: {(proc.stdout + proc.stderr).strip()[-300:]}")


def write_app(folder: Path, config_text: str, run_dir: Path, resume: bool) -> Path:
    """The app bundle's source: a pyproject.toml naming fedcustom's ServerApp and ClientApp."""
    project = {
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {"name": APP_ID, "version": "1.0.0", "description": "a fedcustom experiment",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": APP_ID,
            "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
            "config": {"experiment": config_text, "run-dir": str(run_dir), "resume": resume},
        }}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder


def write_connection(flwr_home: Path, superlink: str, security: Security) -> None:
    """Flower's CLI reads its SuperLink connections from FLWR_HOME/config.toml."""
    connection: dict[str, object] = {"address": superlink}
    if security.insecure:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = security.ca
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(tomli_w.dumps(
        {"superlink": {"default": "fedcustom", "fedcustom": connection}}))


def submit(config_text: str, run_dir: Path, superlink: str, security: Security, resume: bool = False,
           flwr_home: Path | None = None, timeout: float | None = None) -> str:
    """Submit the experiment to a running SuperLink, stream its log until the run ends, and return
    Flower's final status of the run (e.g. 'finished:completed')."""
    with tempfile.TemporaryDirectory(prefix="fedcustom-app-") as tmp:
        home = flwr_home or Path(tmp) / "flwr-home"
        write_connection(home, superlink, security)
        app = write_app(Path(tmp) / "app", config_text, run_dir, resume)
        env = flower_env(home)
        proc = subprocess.Popen([flower_bin("flwr"), "run", str(app), "fedcustom", "--stream"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer is not None:
            timer.start()
        run_id = None
        for line in proc.stdout:  # type: ignore[union-attr]
            print(line, end="", flush=True)
            started = re.search(r"Successfully started run (\d+)", line)
            run_id = started.group(1) if started else run_id
        proc.wait()
        if timer is not None:
            timer.cancel()
        if run_id is None:
            return f"not started (flwr run exited with {proc.returncode})"
        listing = subprocess.run([flower_bin("flwr"), "list", "fedcustom", "--run-id", run_id, "--format",
                                  "json"], env=env, check=False, capture_output=True, text=True, timeout=60)
    try:
        return str(json.loads(listing.stdout)["runs"][0]["status"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"unknown (flwr run exited with {proc.returncode})"
