"""Secure aggregation on the Flower engine, through Flower's SecAgg+ workflow.

With `flower.secure_aggregation = true`, a round's clients send their deltas (update minus the
global state) masked with pairwise and private masks; the server learns only their
example-weighted mean, never one client's update. The workflow (`SecAggPlusWorkflow`) and the
client mod (`secaggplus_mod`) are Flower's; this module adapts them to our round: Flower's legacy
strategy interface hands the workflow our sampled clients and takes back the unmasked mean, which
becomes the round's single update (global state + mean delta) for our strategy.

What the server still sees per client: its number of examples and its training metrics (loss,
steps, seconds). What it cannot do: screen or robustly combine individual updates, so strategies
that need them (median, trimmed mean, Krum) and simulated attacks are config errors with it.
Deltas are clipped to +-`flower.secagg_clip` per coordinate and quantized (Flower's 2^22 levels).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common.recorddict_compat import (
    fitres_to_recorddict,
    parameters_to_arrayrecord,
    recorddict_to_fitins,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedcustom.core.io import atomic_write
from fedcustom.core.types import State

FIT_PARAMETERS = "fitins.parameters"  # where Flower's legacy FitIns keeps the global state


def to_arrays(state: State) -> list[np.ndarray]:
    """A state as Flower's legacy list of arrays: in key order, which both sides know."""
    return [state[k].detach().cpu().numpy() for k in sorted(state)]


def from_arrays(arrays: list[np.ndarray], like: State) -> State:
    return {k: torch.from_numpy(np.asarray(a, dtype=np.float32)).to(like[k].dtype).reshape(like[k].shape)
            for k, a in zip(sorted(like), arrays, strict=True)}


@dataclass
class SecureRound(LegacyStrategy):
    """One round as Flower's legacy strategy: fit instructions for our sampled clients out, the
    securely summed results back in. Evaluation stays with fedcustom."""

    instructions: list[tuple[ClientProxy, FitIns]]
    results: list[tuple[ClientProxy, FitRes]] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return self.instructions

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
        self.results, self.failures = results, failures
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, *_: Any) -> list[Any]:
        return []

    def aggregate_evaluate(self, *_: Any) -> tuple[None, dict[str, Any]]:
        return None, {}

    def evaluate(self, *_: Any) -> None:
        return None


def secure_round(grid: Grid, context: Context, nodes: dict[int, int], cids: list[int], state: State,
                 config: dict[str, Any], max_weight: float, clip: float,
                 timeout: float) -> tuple[State | None, dict[int, FitRes]]:
    """Run SecAgg+ over `cids`: (the example-weighted mean delta or None, each client's FitRes
    with its metrics and number of examples, but no parameters of its own)."""
    proxies = {cid: GridClientProxy(nodes[cid], grid, context.run_id) for cid in cids if cid in nodes}
    global_arrays = ndarrays_to_parameters(to_arrays(state))
    strategy = SecureRound([(proxy, FitIns(global_arrays, dict(config))) for proxy in proxies.values()])
    legacy = LegacyContext(context, strategy=strategy)
    legacy.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(global_arrays, keep_input=True)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: int(config["server-round"])})
    SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.5, max_weight=max_weight,
                       clipping_range=clip, timeout=timeout)(grid, legacy)
    by_node = {proxy.node_id: cid for cid, proxy in proxies.items()}
    fitres = {by_node[proxy.node_id]: res for proxy, res in strategy.results}  # type: ignore[attr-defined]
    if not strategy.results:
        return None, fitres
    mean = from_arrays(parameters_to_ndarrays(strategy.results[0][1].parameters), state)
    return mean, fitres


# --- client side --------------------------------------------------------------------------------

def is_secure_fit(msg: Message) -> bool:
    return FIT_PARAMETERS in msg.content.array_records


def read_secure_config(msg: Message) -> dict[str, Any]:
    """The round's config in a secure round's fit instruction."""
    return dict(recorddict_to_fitins(msg.content, keep_input=True).config)


def read_secure_state(msg: Message, like: State) -> State:
    """The global state in a secure round's fit instruction, shaped and named like `like`."""
    fitins = recorddict_to_fitins(msg.content, keep_input=True)
    return from_arrays(parameters_to_ndarrays(fitins.parameters), like)


def secure_fit_reply(msg: Message, delta: State, num_examples: int, metrics: dict[str, Any]) -> Message:
    """The reply the SecAgg+ mod masks: the delta as legacy parameters, weighted by examples."""
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(to_arrays(delta)), num_examples, metrics)
    content: RecordDict = fitres_to_recorddict(res, keep_input=False)
    return Message(content, reply_to=msg)


# --- what the server sees -----------------------------------------------------------------------

class AuditedGrid:
    """Flower's Grid, counting the bytes each node sends (the serialized content of its replies)
    and, with an audit folder, saving every reply's content as Flower serializes it."""

    def __init__(self, grid: Grid, audit_dir: str) -> None:
        self.grid, self.audit_dir = grid, Path(audit_dir) if audit_dir else None
        self.sent: dict[int, int] = {}  # node id -> bytes, since the last reset
        self.saved = 0

    def __getattr__(self, name: str) -> Any:  # everything else is the Grid's
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        from flwr.common.serde import recorddict_to_proto

        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                continue
            blob = recorddict_to_proto(reply.content).SerializeToString()
            node = reply.metadata.src_node_id
            self.sent[node] = self.sent.get(node, 0) + len(blob)
            if self.audit_dir is not None:
                self.audit_dir.mkdir(parents=True, exist_ok=True)
                atomic_write(self.audit_dir / f"{self.saved:06d}-node-{node}.pb", blob)
                self.saved += 1
        return replies


def read_audit(audit_dir: Path) -> list[np.ndarray]:
    """Every array in what the server received: ArrayRecords and arrays sent as bytes (SecAgg+'s
    masked vectors travel so)."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.serde import recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    arrays = []
    for path in sorted(audit_dir.glob("*.pb")):
        proto = ProtoRecordDict()
        proto.ParseFromString(path.read_bytes())
        content = recorddict_from_proto(proto)
        for record in content.array_records.values():
            arrays += [a.numpy() for a in record.values()]
        for record in content.config_records.values():
            for value in record.values():
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, bytes):
                        with contextlib.suppress(Exception):  # not every bytes value is an array
                            arrays.append(bytes_to_ndarray(item))
    return arrays
