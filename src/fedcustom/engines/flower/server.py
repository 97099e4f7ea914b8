"""Flower's deployment engine: the same methods, strategies and round loop, with every client a
SuperNode that holds its own data.

The ServerApp (apps/serverapp.py) runs the whole experiment (data for evaluation, checkpoints,
records, the strategy) in the ServerApp process on the SuperLink's host; its federated mode uses
`FlowerEngine`, which reaches a round's clients through Flower's Grid. The ClientApp
(apps/clientapp.py; its training in client.py) runs on each SuperNode and does the same
`client_update` as an in-process client, so both engines give the same numbers.

Payloads travel as Flower ArrayRecords (the method's tensors, no pickle); the bytes recorded are
the same safetensors sizes as in simulation (with secure aggregation: the serialized size of each
client's replies). A client that does not answer within `flower.round_timeout` (a killed
SuperNode) is recorded as missing and the round goes on without it, unless fewer than
`federation.min_clients` updates arrived.
"""

from __future__ import annotations

import json
import time
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedcustom.core.config import ExperimentConfig, dumps
from fedcustom.core.errors import UserError
from fedcustom.core.io import new_run_dir
from fedcustom.core.log import logger
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.registry import ENGINES
from fedcustom.core.types import Instructions, LocalResult, State
from fedcustom.engines.base import Engine
from fedcustom.engines.flower.client import config_from_text
from fedcustom.engines.flower.deploy import CLIENT_APP, SERVER_APP, load_app
from fedcustom.engines.flower.loopback import run_local
from fedcustom.engines.flower.secagg import AuditedGrid, secure_round
from fedcustom.federation.replies import Failure, Receive, Reply, RoundReplies, SecureMean, payload_limit
from fedcustom.federation.rounds import Job, run_rounds

# Reply errors that mean "no answer from this node", as opposed to the client failing.
UNREACHABLE = {ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE}


# --- server side --------------------------------------------------------------------------------

@dataclass
class Deployment:
    """What the ServerApp hands the engine: Flower's grid and the config text clients rebuild from."""

    grid: Grid
    context: Context
    config_text: str
    label_names: list[str]


CURRENT: ContextVar[Deployment | None] = ContextVar("fedcustom_flower_deployment", default=None)


@ENGINES.register("flower")
class FlowerEngine(Engine):
    # Tensors travel: weights, and the black-box search's candidate indices and scores. A site
    # keeps its built model between messages only while its executor lives (and not at all under
    # `--isolation subprocess`), and it keeps no per-client trained state, so distillation
    # (clients keep their own model between rounds) is in-process only for now.
    exchanges = frozenset({"weights", "scores"})

    @classmethod
    def launch(cls, cfg: ExperimentConfig, resume_dir: Path | None = None) -> Path | None:
        """From `fedcustom run`: a whole federation on this machine (see loopback.run_local)."""
        if CURRENT.get() is not None:
            return None  # already inside the ServerApp
        return run_local(cfg, resume_dir)

    def __init__(self) -> None:
        deployment = CURRENT.get()
        if deployment is None:
            raise UserError("engine 'flower' runs inside a Flower ServerApp: start it with "
                            "`fedcustom run` (a local deployment) or `fedcustom flower submit`")
        self.deployment = deployment
        self.cfg = config_from_text(deployment.config_text)
        self.grid = AuditedGrid(deployment.grid, self.cfg.flower.audit_dir)
        self.nodes: dict[int, int] = {}  # client id -> Flower node id
        self.silent: set[int] = set()  # nodes that did not answer the last message sent to them
        self.replaced: set[int] = set()  # nodes whose client came back as another node: never asked again

    def message(self, node: int, kind: str, config: dict[str, Any], arrays: State | None = None) -> Message:
        content = RecordDict({"config": ConfigRecord({
            "experiment": self.deployment.config_text,
            "label-names": json.dumps(self.deployment.label_names), **config})})
        if arrays is not None:
            content["arrays"] = ArrayRecord(arrays)
        return Message(content, dst_node_id=node, message_type=kind)

    def discover(self, num_clients: int, wait: float) -> None:
        """Map client ids to SuperNodes: ask every node not yet known which client it is.

        A restarted SuperNode registers as a new node (a new key, so a new node id) while the
        SuperLink may still list the dead one as online (until its heartbeat expires, 30-60 s). A
        new node that claims a known client replaces that client's node when the old one is gone:
        no longer online, silent at the last message sent to it, or silent when asked now. Only
        an old node that answers is a second SuperNode with the same client id, an error."""
        grid, deadline = self.grid, time.monotonic() + wait
        while True:
            online = set(grid.get_node_ids())
            unknown = sorted(online - set(self.nodes.values()) - self.replaced)
            if unknown:
                for reply in self.ask(unknown):
                    if reply.has_error():
                        continue
                    cid, node = int(reply.content["metrics"]["client-id"]), reply.metadata.src_node_id
                    if not 0 <= cid < num_clients:
                        raise UserError(f"a SuperNode says it is client {cid}; this federation has "
                                        f"clients 0..{num_clients - 1} (partition.num_clients)")
                    old = self.nodes.get(cid, node)
                    if old != node:
                        if old in online and old not in self.silent and self.answers(old):
                            raise UserError(f"two SuperNodes say they are client {cid}: give each its "
                                            f"own --client-id")
                        logger.info(f"flower: client {cid} is back as a new SuperNode")
                        self.replaced.add(old)
                        self.silent.discard(old)
                    self.nodes[cid] = node
            if len(self.nodes) == num_clients or time.monotonic() >= deadline:
                return
            time.sleep(0.5)

    def ask(self, nodes: list[int]) -> list[Message]:
        """Ask nodes which client they are; the replies that came within the query timeout."""
        return list(self.grid.send_and_receive([self.message(n, "query", {}) for n in nodes],
                                               timeout=min(60.0, self.cfg.flower.round_timeout)))

    def answers(self, node: int) -> bool:
        return any(not reply.has_error() for reply in self.ask([node]))

    def run(self, job: Job) -> State:
        num_clients = len(job.clients)
        self.discover(num_clients, self.cfg.flower.connect_timeout)
        logger.info(f"flower: {len(self.nodes)} of {num_clients} clients connected")

        def train_clients(server_round: int, down: bytes, cids: list[int],
                          instructions: Instructions, receive: Receive) -> RoundReplies:
            # Every round, not only while a client has no node: a restarted SuperNode comes back
            # as a new node while its client still maps to the dead one (it was never found again).
            self.discover(num_clients, 0)
            state = deserialize(down)
            if self.cfg.flower.secure_aggregation:
                return self.heard(self.secure_round(job, server_round, state, cids, instructions))
            replies = {cid: Reply(missing=True) for cid in cids}
            sent = {cid: self.message(self.nodes[cid], "train",
                                      {"server-round": server_round, "client-id": cid,
                                       **asdict(instructions)},
                                      state)
                    for cid in cids if cid in self.nodes}
            answers = self.grid.send_and_receive(list(sent.values()), timeout=self.cfg.flower.round_timeout)
            # Replies name the message they answer (an error made by the SuperLink for a dead node
            # comes from the SuperLink, not from the node); sending gave each message its id.
            by_message = {msg.metadata.message_id: cid for cid, msg in sent.items()}
            for answer in answers:
                cid = by_message[answer.metadata.reply_to_message_id]
                if answer.has_error():
                    if answer.error.code not in UNREACHABLE:
                        replies[cid] = Reply(failure=Failure(answer.error.reason))
                    continue
                replies[cid] = receive(cid, read_reply(answer.content, payload_limit(len(down))))
            return self.heard(RoundReplies(replies))

        return run_rounds(job, train_clients)

    def heard(self, answers: RoundReplies) -> RoundReplies:
        """Note which asked clients' nodes were silent this round (see discover)."""
        for cid, reply in answers.replies.items():
            if cid in self.nodes:
                (self.silent.add if reply.missing else self.silent.discard)(self.nodes[cid])
        return answers

    def secure_round(self, job: Job, server_round: int, state: State, cids: list[int],
                     instructions: Instructions) -> RoundReplies:
        """SecAgg+: per client only metrics; the update is the mean of all (see secagg.py)."""
        config = {"experiment": self.deployment.config_text,
                  "label-names": json.dumps(self.deployment.label_names),
                  "server-round": server_round, **asdict(instructions)}
        # the largest client's weight gets full precision; under client-side DP every client weighs 1
        max_weight = 1 if instructions.dp_clip_norm > 0 else max(len(rows) for rows in job.clients.rows)
        self.grid.sent.clear()
        flower = self.cfg.flower
        mean_delta, fitres = secure_round(self.grid, self.deployment.context, self.nodes, cids, state, config,
                                          max_weight, flower.secagg_clip, flower.round_timeout)
        replies = {cid: Reply(missing=True) for cid in cids}
        for cid, res in fitres.items():  # its examples weigh its training loss, whatever its weight
            replies[cid] = Reply(None, local_result(res.metrics), int(res.metrics["num-examples"]),
                                 sent=self.grid.sent.get(self.nodes[cid], 0))
        if mean_delta is None:
            return RoundReplies(replies)
        mean = {k: state[k] + mean_delta[k] for k in state}
        examples = sum(r.num_examples for r in fitres.values())  # their weights in the mean
        return RoundReplies(replies, SecureMean(serialize(mean), examples, sorted(fitres)))


def read_reply(content: RecordDict, limit: int) -> Reply:
    """A client's training reply as the round loop takes it. Its arrays are counted before any is
    converted: more than `limit` bytes, or anything that is no state of tensors, is refused with
    the reason (the round records the client as rejected and goes on); a reply without readable
    metrics is the client's failure."""
    try:
        metrics = content["metrics"]
        local, examples = local_result(metrics), int(metrics["num-examples"])
    except Exception as e:  # noqa: BLE001 - whatever a client sent, the round goes on
        return Reply(failure=Failure(f"malformed reply: {first_line(e)}"))
    try:
        arrays = content["arrays"]
        size = sum(len(array.data) for array in arrays.values())
    except Exception as e:  # noqa: BLE001
        return Reply(local=local, examples=examples, refused=f"no arrays in the reply ({first_line(e)})")
    if size > limit:
        return Reply(local=local, examples=examples, sent=size,
                     refused=f"{size:,} bytes, over the limit of {limit:,}")
    try:
        update = serialize(dict(arrays.to_torch_state_dict()))
    except Exception as e:  # noqa: BLE001 - Flower and torch report bad arrays in several ways
        return Reply(local=local, examples=examples, sent=size,
                     refused=f"not a state of tensors ({first_line(e)})")
    return Reply(update, local, examples)


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:80]


def local_result(metrics: Any) -> LocalResult:
    return LocalResult(float(metrics["loss"]), int(metrics["steps"]), int(metrics["examples"]),
                       float(metrics["seconds"]), int(metrics["forward-passes"]),
                       int(metrics["backward-passes"]))


# Flower's simulation engine passes the ServerApp no run config: its launcher leaves it here.
SIMULATION_RUN: dict[str, Any] = {}


@ENGINES.register("flower-simulation", needs=("ray",))
class FlowerSimulationEngine(FlowerEngine):
    """Flower's simulation engine (Ray): the same ServerApp and ClientApp as a deployment, each
    client a virtual SuperNode served by Ray actors on this machine (one CPU each). For
    comparisons with Flower's own runtime; the in-process engine is the fast one."""

    @classmethod
    def launch(cls, cfg: ExperimentConfig, resume_dir: Path | None = None) -> Path | None:
        if CURRENT.get() is not None:
            return None
        from flwr.simulation import run_simulation  # Ray: imported only where it runs

        run_dir = resume_dir or new_run_dir(cfg.output_dir, cfg.name)
        SIMULATION_RUN.update({"experiment": dumps(cfg), "run-dir": str(run_dir),
                               "resume": resume_dir is not None})
        try:
            run_simulation(load_app(SERVER_APP), load_app(CLIENT_APP),
                           num_supernodes=cfg.partition.num_clients,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"num_cpus": 1}})
        finally:
            SIMULATION_RUN.clear()
        if not (run_dir / "summary.txt").is_file():
            raise UserError(f"the Flower simulation did not finish; what was done is in {run_dir}")
        return run_dir
