"""The round's vocabulary, below every layer that uses it: what travels, what a client is asked
to do, what it reports, and what a strategy aggregates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

# What travels between server and clients, and what a checkpoint holds: tensors by name. Its
# meaning belongs to the method (prefix vectors, LoRA matrices, logits on a public set, scores).
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Instructions:
    """What the server asks of every client's local work in a round, beside the global state:
    the round's learning-rate schedule, and what the strategy adds (Strategy.instruct)."""

    lr_scale: float = 1.0  # multiplies the learning rates (the schedule over rounds)
    prox_mu: float = 0.0  # FedProx: add (mu/2)*||w - w_start||^2 to the loss (0: off)
    clients: int = 0  # how many clients the round asked (0: not told)
    # client-side DP (dp_fedavg, distributed): the client clips its delta to this L2 norm and adds
    # Gaussian noise of this std before its update leaves (0: off)
    dp_clip_norm: float = 0.0
    dp_noise_std: float = 0.0
    dp_seed: int = -1  # >= 0: the noise is drawn from (dp_seed, round, client); -1: fresh randomness


@dataclass(frozen=True)
class FitContext:
    """One client's local work in one round: who, when, its seed, and the round's instructions."""

    cid: int
    server_round: int
    seed: int  # fixes batch order and dropout: the same (config, round, client) gives the same update
    instructions: Instructions = field(default_factory=Instructions)

    @property
    def progress(self) -> str:
        return f"round {self.server_round} client {self.cid}"


@dataclass(frozen=True)
class LocalResult:
    """What a client's local work reports besides its state."""

    loss: float  # mean training loss over the local steps
    steps: int
    examples: int  # examples seen, epochs included
    seconds: float
    # Model passes over single examples: the compute of the local work, comparable across methods.
    # Forward-only (black-box) methods count examples x prompts scored; the shared loop counts one
    # forward and one backward per example seen. 0 where a method does not count.
    forward_passes: int = 0
    backward_passes: int = 0


@dataclass(frozen=True)
class Update:
    """One entry a strategy aggregates: a state and its weight (the examples behind it). The state
    is read-only: a dict, or a state kept on disk while its round lasts (core.payload.StateFile,
    federation/inbox.py), which reads a tensor per lookup, so read it key by key."""

    state: Mapping[str, torch.Tensor]
    examples: int


# Ownership masks (exchange "masked-weights"): beside an entry `k`, a state may hold the entry
# owned_key(k), a bool tensor that broadcasts to k's shape and is True where the sender trained k
# (a client with a smaller LoRA rank trains only the first components of each matrix). Every
# client's state has the same keys and shapes; the mask says which elements are its own. FedAvg
# averages each element over the clients that own it, and update screening measures only what a
# sender owns. An entry without a mask is owned whole by every sender.
OWNED = "owned:"


def owned_key(key: str) -> str:
    """The key of entry `key`'s ownership mask."""
    return OWNED + key


def is_owned_key(key: str) -> bool:
    """Is `key` an ownership mask (bookkeeping, not a weight)?"""
    return key.startswith(OWNED)
