"""The ClientApp each SuperNode runs (`fedcustom.apps.clientapp:client_app`), light to import.

A fedcustom site serves every message in one long-lived process (engines/flower/executor.py), which
imports the training stack once and keeps the model. Under Flower's `--isolation subprocess` a
fresh process runs each message instead, and this module is what that process imports first:
Flower and the standard library only. So there the messages that do no training (the server asking
which client a node is, and the key, share and unmasking stages of a SecAgg+ round) cost a Python
start, not torch, transformers and peft (about 14 s on a 2-core machine). A training message
imports the rest: engines/flower/client.py.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedcustom.engines.flower.node import node_client_id


def secagg_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """A ClientApp mod: SecAgg+ for the messages of a secure round, nothing for the others."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


client_app = ClientApp(mods=[secagg_when_asked])


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    """Which client this SuperNode is: read from its node config, nothing loaded."""
    metrics = MetricRecord({"client-id": node_client_id(context)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    # Imported here, not at the top: only a training message pays for torch, transformers and peft.
    from fedcustom.engines.flower.client import train

    return train(msg, context)
