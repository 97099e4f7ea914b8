"""`fedcustom flower ...`: run a federation across machines on Flower's deployment engine.

    certificates DIR --host NAME ...   a CA and the SuperLink's TLS certificate
    node-key DIR NAME                  a SuperNode's key pair (node authentication)
    superlink                          the server (runs the ServerApp: aggregation, evaluation, records)
    register PUBLIC_KEY                admit a SuperNode's key at a SuperLink with --node-auth
    supernode --client-id N --data F   one client site, reading only its own data
    submit CONFIG --run-dir DIR        start an experiment on a running federation and follow it
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fedcustom.core.errors import UserError


def security(args: argparse.Namespace, server: bool = False):  # noqa: ANN201 - deploy.Security
    from fedcustom.engines.flower.deploy import Security

    if args.insecure and args.certificates:
        raise UserError("--insecure and --certificates exclude each other")
    return Security(args.insecure, Path(args.certificates) if args.certificates else None).check(server)


def flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))


def exec_flower(cmd: list[str]) -> None:
    """Become the Flower process, so signals and exit codes are its own."""
    from fedcustom.engines.flower.deploy import flower_env

    print(" ".join(cmd), flush=True)
    os.execvpe(cmd[0], cmd, flower_env(flwr_home()))


def cmd_certificates(args: argparse.Namespace) -> None:
    from fedcustom.engines.flower.credentials import make_certificates

    for path in make_certificates(Path(args.dir), args.host, args.days):
        print(path)
    print(f"copy {args.dir}/ca.crt to every SuperNode and submitter; keep {args.dir}/ca.key elsewhere")


def cmd_node_key(args: argparse.Namespace) -> None:
    from fedcustom.engines.flower.credentials import make_node_key

    private, public = make_node_key(Path(args.dir), args.name)
    print(f"private key (stays on the SuperNode): {private}\npublic key (register it): {public}")


def cmd_superlink(args: argparse.Namespace) -> None:
    from fedcustom.engines.flower.deploy import superlink_command

    database = Path(args.database) if args.database else None
    secured = security(args, server=True)
    exec_flower(superlink_command(args.port, args.host, secured, args.node_auth, database))


def cmd_register(args: argparse.Namespace) -> None:
    from fedcustom.engines.flower.deploy import register_node

    register_node(Path(args.public_key), args.superlink, security(args))
    print(f"registered {args.public_key} at {args.superlink}")


def cmd_supernode(args: argparse.Namespace) -> None:
    from fedcustom.engines.flower.deploy import flower_env, supernode_command
    from fedcustom.engines.flower.executor import exec_site, runtime_address, serve_command

    data = Path(args.data) if args.data else None
    if data is not None and not data.is_file():
        raise UserError(f"--data {data}: no such file")
    key = Path(args.auth_key) if args.auth_key else None
    if key is not None and not key.is_file():
        raise UserError(f"--auth-key {key}: no such file")
    cmd = supernode_command(args.superlink, args.client_id, security(args), args.port, data, key,
                            args.isolation)
    if args.isolation == "subprocess":
        exec_flower(cmd)
    address = runtime_address(args.port)
    print(f"{' '.join(serve_command(address))}  # the site's ClientApp: keeps the model loaded", flush=True)
    print(" ".join(cmd), flush=True)
    exec_site(address, cmd, flower_env(flwr_home()))


def cmd_submit(args: argparse.Namespace) -> None:
    from fedcustom.core.config import dumps, load_config
    from fedcustom.engines.flower.deploy import submit

    if args.resume:
        if args.config or args.set:
            raise UserError("--resume goes on with the config saved in --run-dir: give no CONFIG or --set")
        text = ""  # the ServerApp reads RUN_DIR/config.toml on its host
    else:
        if not args.config:
            raise UserError("submit needs a CONFIG file (or --resume)")
        cfg = load_config(args.config, [*args.set, "engine=flower"])  # checked here, before submitting
        text = dumps(cfg)
    status = submit(text, Path(args.run_dir), args.superlink, security(args), args.resume)
    if status != "finished:completed":
        raise UserError(f"the run ended as '{status}' (see the log above; resume with --resume)")
    print(f"results: {args.run_dir} (on the SuperLink's host)")


def add_security(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--certificates", metavar="DIR",
                   help=f"folder from `fedcustom flower certificates` ({what})")
    p.add_argument("--insecure", action="store_true", help="no TLS: only for a federation on one machine")


def add_commands(sub: argparse._SubParsersAction) -> None:
    flower = sub.add_parser("flower", help="run across machines on Flower's deployment engine")
    flower.set_defaults(needs=("flwr",))  # optional packages (core.extras), checked before it runs
    fsub = flower.add_subparsers(dest="flower_command", required=True)

    p = fsub.add_parser("certificates", help="make a CA and the SuperLink's TLS certificate")
    p.add_argument("dir")
    p.add_argument("--host", action="append", required=True,
                   help="a DNS name or IP address clients use for the SuperLink (repeat for more)")
    p.add_argument("--days", type=int, default=365, help="validity in days")
    p.set_defaults(func=cmd_certificates)

    p = fsub.add_parser("node-key", help="make a SuperNode's key pair for node authentication")
    p.add_argument("dir")
    p.add_argument("name", help="file name of the private key (NAME.pub: the public key)")
    p.set_defaults(func=cmd_node_key)

    p = fsub.add_parser("superlink", help="start the server (SuperLink + ServerApp)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=9093, help="port of the Fleet and Control APIs")
    p.add_argument("--node-auth", action="store_true", help="admit only registered SuperNode keys")
    p.add_argument("--database", metavar="FILE", help="keep Flower's state in this SQLite file")
    add_security(p, "ca.crt, server.pem, server.key")
    p.set_defaults(func=cmd_superlink)

    p = fsub.add_parser("register", help="admit a SuperNode's public key (SuperLink with --node-auth)")
    p.add_argument("public_key")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT")
    add_security(p, "ca.crt")
    p.set_defaults(func=cmd_register)

    p = fsub.add_parser("supernode", help="start one client site")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT")
    p.add_argument("--client-id", type=int, required=True, help="this site's client number, 0..clients-1")
    p.add_argument("--data", metavar="FILE", help="the site's own CSV/JSONL data (default: its partition "
                                                  "of the experiment's dataset, for trials)")
    p.add_argument("--auth-key", metavar="FILE", help="private key from `fedcustom flower node-key`")
    p.add_argument("--port", type=int, default=9094, help="local port for the ClientApp process")
    p.add_argument("--isolation", choices=["process", "subprocess"], default="process",
                   help="process (default): one long-lived ClientApp process (fedcustom's executor) serves "
                        "every message and keeps the model loaded; subprocess: Flower's default, a fresh "
                        "process (imports and model build) for every message")
    add_security(p, "ca.crt")
    p.set_defaults(func=cmd_supernode)

    p = fsub.add_parser("submit", help="run an experiment on a running federation and follow its log")
    p.add_argument("config", nargs="?", help="experiment TOML (engine is set to flower)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT")
    p.add_argument("--run-dir", required=True, help="results folder on the SuperLink's host")
    p.add_argument("--resume", action="store_true", help="go on from the last checkpoint in --run-dir")
    add_security(p, "ca.crt")
    p.set_defaults(func=cmd_submit)
