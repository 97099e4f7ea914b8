"""What a SuperNode knows of itself: its client number and, optionally, its own data file (node
config keys). Flower and the standard library only: the ClientApp imports this first."""

from __future__ import annotations

from flwr.app import Context

from fedcustom.core.errors import UserError

NODE_CLIENT_ID, NODE_DATA_PATH = "client-id", "data-path"


def node_client_id(context: Context) -> int:
    """A SuperNode's client number: `client-id` in its node config (Flower's simulation engine
    numbers its virtual nodes by `partition-id`)."""
    for key in (NODE_CLIENT_ID, "partition-id"):
        if key in context.node_config:
            return int(context.node_config[key])
    raise UserError(f"this SuperNode has no '{NODE_CLIENT_ID}' in its node config")
