"""What a round gets back from its clients: Replies (an update, or why there is none), taken into
the round's Inbox as they arrive (`take`) and read back as updates by sender (`collect`).

Engines build Replies; federation/rounds.py runs the round on them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from fedcustom.core.payload import deserialize
from fedcustom.core.types import Instructions, LocalResult, Update
from fedcustom.federation.inbox import Inbox
from fedcustom.federation.screening import SECURE_MEAN, Sender


@dataclass(frozen=True)
class Failure:
    """Why a client's round failed, as it reported it."""

    message: str
    exception: Exception | None = None  # the exception itself, where the client ran on this machine


@dataclass
class Reply:
    """What the server got from one client in a round: an update, or the reason there is none."""

    # the serialized state (None under secure aggregation, and once the round has taken it: Receive)
    update: bytes | None = None
    local: LocalResult | None = None
    examples: int = 0  # the weight of the update (the client's number of training examples)
    failure: Failure | None = None  # the client failed
    missing: bool = False  # no answer in time (a dead node, a lost connection)
    sent: int | None = None  # bytes the client sent, where an engine measures them (else len(update))
    # the engine could not take the client's update (too large, not a state of tensors): why; the
    # round records the client as rejected, as for unreadable bytes
    refused: str | None = None


@dataclass(frozen=True)
class SecureMean:
    """Under secure aggregation, the only update the server sees: the example-weighted mean of
    the clients' states, none of which it saw on its own."""

    update: bytes  # the serialized mean state
    examples: int
    clients: list[int]  # whose updates are in the mean


@dataclass
class RoundReplies:
    replies: dict[int, Reply]  # by client id, one per client asked
    secure_mean: SecureMean | None = None


# An engine calls this with each client's reply as soon as it has it, and keeps what it returns:
# the same reply, its payload taken by the round (its size left in `sent`).
Receive = Callable[[int, Reply], Reply]


# (server round, serialized global state, clients to train, the round's instructions, where each
# reply goes) -> replies
TrainClients = Callable[[int, bytes, list[int], Instructions, Receive], RoundReplies]


def payload_limit(down: int) -> int:
    """The largest update the server parses: twice the global state's size, plus 64 KiB for a
    method whose upload differs a little from its download (score search, distillation)."""
    return 2 * down + 65536


def take(inbox: Inbox, late: Collection[int], cid: int, reply: Reply) -> Reply:
    """A round's Receive: client `cid`'s payload goes into `inbox`, unless the round will not use
    it (the client failed, was late or sent something the engine refused); the reply keeps only
    the payload's size, so no client's bytes outlive the moment they arrive."""
    payload = reply.update
    if payload is None:
        return reply
    reply.update = None
    if reply.sent is None:
        reply.sent = len(payload)
    if reply.local is not None and reply.refused is None and cid not in late:
        inbox.add(cid, payload, reply.examples)
    return reply


def collect(inbox: Inbox, reported: dict[int, Reply], secure: SecureMean | None
            ) -> tuple[dict[Sender, Update], dict[int, str]]:
    """The round's updates by sender, in client order, and why the other reported clients' updates
    are unreadable: what `inbox` took of their replies (under secure aggregation, the one mean)."""
    updates: dict[Sender, Update] = {}
    unreadable: dict[int, str] = {}
    for cid, r in reported.items():
        if r.refused is not None:
            unreadable[cid] = r.refused
        elif cid in inbox.unreadable:
            unreadable[cid] = inbox.unreadable[cid]
        elif cid in inbox.updates:
            updates[cid] = inbox.updates[cid]
    if secure is not None:  # the clients' updates arrived only as their mean
        updates = {SECURE_MEAN: Update(deserialize(secure.update), secure.examples)}
    return updates, unreadable

