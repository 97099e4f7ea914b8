"""A long-lived ClientApp executor for a SuperNode: the site keeps its model between messages.

Flower 1.41 runs every message a SuperNode receives in a fresh `flwr-clientapp` process, in both of
its isolation modes: with `--isolation subprocess` the SuperNode's own SuperExec starts it, with
`--isolation process` an executor the operator runs asks the SuperNode's Runtime API for tasks and
starts one per task. A fresh process imports torch, transformers and peft and builds the model for
every round (about 11 s of imports on a 2-core machine, then the model load: minutes for a 7B).

This module is such an operator-run executor for `--isolation process` that runs the tasks itself,
one after another, in one process: it takes a task from the Runtime API, pulls its message,
context and app bundle, loads the ClientApp as Flower loads it, calls it and pushes the reply and
context back, exactly the steps of Flower's `flwr-clientapp` minus the process exit. What a
ClientApp keeps in module state therefore survives between messages, as in Flower's simulation
runtime (whose Ray actors keep their process): fedcustom's training handler keeps the built
clients (model, tokenized data) keyed by run, config and node (engines/flower/client.py) and loads
each message's global state into them, as the in-process engine does for every client.

The pieces of the Runtime API it uses are Flower's own (the functions `flwr-clientapp` is made
of); they are internal to Flower, which is why fedcustom pins flwr to one version.

    python -m fedcustom.engines.flower.executor serve --runtime-api-address 127.0.0.1:9094
    python -m fedcustom.engines.flower.executor site --runtime-api-address 127.0.0.1:9094 -- \\
        flower-supernode --isolation process --port 9094 ...

`site` starts `serve` as a child, waits until it has imported the training stack, then becomes the
SuperNode (exec): one process tree per site; the executor stops when the SuperNode ends.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from logging import ERROR, INFO, WARNING
from typing import NoReturn

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
)
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from fedcustom.core.errors import UserError

POLL_SECONDS = 0.1  # between asking the SuperNode for a task (Flower's SuperExec: 1 s)
# imported when the executor starts, before any message: a fedcustom site's training stack
PRELOAD = ("fedcustom.engines.flower.client",)


def runtime_client(address: str, component: str, token: str | None = None) -> RuntimeHttpClient:
    """An HTTP client of the SuperNode's Runtime API on this host (plain HTTP on loopback, as
    Flower's own SuperExec uses it unless the SuperNode serves it with TLS)."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None, interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker())


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """The task's context, run, app bundle and message, as Flower's `pull_task_input` gets them,
    except the wait for the message's arrays: a task is offered as soon as the SuperNode has the
    message, its arrays may still be arriving, and Flower's first retry comes after 1 s, which a
    fresh process used to hide behind its start. Here the first retry comes after 20 ms."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = (
        res.task_id, res.run.run_id, res.context.node_id)
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=0.02, backoff_cap=1.0)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower: the id is not inflated
    return message, context, run, fab


def run_task(address: str, token: str) -> tuple[str, float]:
    """One task, as `flwr-clientapp` runs it (pull, install the bundle, load and call the ClientApp,
    push the reply and the context), in this process. Returns the message type and seconds."""
    start = time.perf_counter()
    client = runtime_client(address, "flwr-clientapp", token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message: Message | None = None
    context: Context | None = None
    reply: Message | None = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        install_from_fab(fab.content, skip_prompt=True)  # returns at once when it is installed
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        app = load(run.fab_id, run.fab_version, fab.hash_str)  # imported once, then from sys.modules
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as e:  # noqa: BLE001 - as flwr-clientapp: the server gets the error as the reply
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = f"{type(e)}:<'{e}'>"
        if isinstance(e, LoadClientAppError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            reason = "An exception was raised when attempting to load `ClientApp`"
        log(ERROR, "ClientApp raised an exception", exc_info=e)
        details = reason
        if message is not None:
            reply = Message(Error(code=code, reason=reason), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as e:  # noqa: BLE001
            log(ERROR, "Failed to push reply message", exc_info=e)
        push_task_output(client=client, context=context, sub_status=status, details=details)
        heartbeat.stop()
        client.close()
    kind = message.metadata.message_type if message is not None else "?"
    return kind, time.perf_counter() - start


def serve(address: str, parent_pid: int | None = None, preload: Sequence[str] = PRELOAD,
          poll: float = POLL_SECONDS, ready_fd: int | None = None) -> NoReturn:
    """Take the SuperNode's ClientApp tasks one at a time, for as long as the SuperNode lives.
    Once the training stack is imported, a byte on `ready_fd` tells `exec_site` to go on."""
    # The parent monitor stops this process with SIGINT: make it count even where it was inherited
    # as ignored (a site started in the background by a shell script); SIGTERM stops it too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if parent_pid is not None:
        follow_parent(parent_pid)
    started = time.perf_counter()
    show_fedcustom_log()
    for module in preload:
        importlib.import_module(module)
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    log(INFO, "fedcustom executor (pid %s): serving the SuperNode at %s; imports took %.1f s",
        os.getpid(), address, time.perf_counter() - started)
    acquirer = runtime_client(address, "SuperExec")
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    try:
        while True:
            try:
                response = acquirer.AcquireTask(request)
            except Exception as e:  # noqa: BLE001 - the SuperNode is starting or restarting
                log(WARNING, "fedcustom executor: no Runtime API at %s yet (%s)", address, type(e).__name__)
                time.sleep(1.0)
                continue
            if response.HasField("task") and response.token:
                kind, seconds = run_task(address, response.token)
                log(INFO, "fedcustom executor: task %s (%s) served in %.3f s", response.task.task_id, kind,
                    seconds)
                continue  # another may be waiting
            time.sleep(poll)
    except KeyboardInterrupt:
        log(INFO, "fedcustom executor: stopping (the SuperNode is gone, or asked to stop)")
        sys.exit(0)
    finally:
        acquirer.close()


def follow_parent(parent_pid: int, interval: float = 0.2) -> None:
    """SIGINT to this process once the SuperNode is gone: this process has been handed to another
    parent (which happens as the SuperNode exits, even while it waits as a zombie to be reaped,
    when a check of its process id alone would still find it)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True, name="fedcustom-follow-parent").start()


def show_fedcustom_log() -> None:
    """fedcustom's INFO messages (a site building its clients) on stdout, the SuperNode's log; no
    progress bars, which would garble it."""
    import logging

    from fedcustom.core.log import logger, no_bars

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("fedcustom: %(message)s"))
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    no_bars()


def serve_command(address: str, parent_pid: int | None = None, ready_fd: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "fedcustom.engines.flower.executor", "serve", "--runtime-api-address",
           address]
    cmd += ["--parent-pid", str(parent_pid)] if parent_pid is not None else []
    return cmd + (["--ready-fd", str(ready_fd)] if ready_fd is not None else [])


def site_command(address: str, supernode: list[str]) -> list[str]:
    """One command for a whole site: the executor, then the SuperNode (see `exec_site`)."""
    return [sys.executable, "-m", "fedcustom.engines.flower.executor", "site", "--runtime-api-address",
            address, "--", *supernode]


def exec_site(address: str, supernode: list[str], env: dict[str, str] | None = None) -> NoReturn:
    """Start the executor as a child that ends when this process ends; once it has imported the
    training stack, become the SuperNode (same process id), so signals and the exit code are the
    SuperNode's. An executor that cannot start is a one-line error, and no SuperNode starts."""
    env = dict(os.environ) if env is None else env
    read, write = os.pipe()
    child = subprocess.Popen(serve_command(address, os.getpid(), write), env=env,  # noqa: S603
                             pass_fds=(write,))
    os.close(write)
    with os.fdopen(read, "rb") as ready:
        started = ready.read(1) == b"1"  # b"": the executor exited before it was ready
    if not started:
        raise UserError(f"fedcustom's executor could not start (exit code {child.wait()}; its error is "
                        "above): fix it, or run Flower's default with --isolation subprocess")
    os.execvpe(supernode[0], supernode, env)


def runtime_address(port: int) -> str:
    """Where a SuperNode started with `--port PORT` serves its Runtime API (Flower's default host)."""
    return f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, supernode = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m fedcustom.engines.flower.executor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["serve", "site"], help="site: then -- and the SuperNode command")
    parser.add_argument("--runtime-api-address", required=True, metavar="HOST:PORT")
    parser.add_argument("--parent-pid", type=int, help="serve: its parent (the SuperNode): stop when it ends")
    parser.add_argument("--ready-fd", type=int, help="serve: write a byte here once ready")
    args = parser.parse_args(own)
    if args.mode == "serve":
        serve(args.runtime_api_address, args.parent_pid, ready_fd=args.ready_fd)
    if not supernode:
        parser.error("site needs the SuperNode's command after --")
    try:
        exec_site(args.runtime_api_address, supernode)
    except UserError as e:
        print(f"fedcustom: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
