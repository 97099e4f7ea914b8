"""Heterogeneous LoRA ranks (HetLoRA-style, Cho et al. 2024): clients whose memory differs train
LoRA adapters of different ranks, and the server still combines them soundly.

The scheme: zero-padding to one global rank R (`rank`) with rank-aware averaging. The exchanged
state always has rank R, so every client's state has the same keys and shapes (what screening,
checkpoints and the wire assume). Client c (rank r_c = client_ranks[c % len]) keeps the first
r_c rank components of the global state it receives (rows of each A, columns of each B) and
zeroes the rest (truncation), trains, and sends the zeros back beside an ownership mask per LoRA
matrix (core.types.owned_key: True on its first r_c components). FedAvg then averages each
component over the clients that own it (for component i: the example-weighted mean over the
clients with r_c > i); a component no client trained this round keeps its global value. The
task head is owned by every client. With every r_c = R this is LoRA + FedAvg, bit for bit.

Why the ranks cannot leak: a component whose row of A and column of B are both zero gets a zero
gradient in both (dL/dB[:, i] is proportional to A[i] x, dL/dA[i] to B[:, i]), and AdamW, weight
decay, clipping and FedProx's term all leave a zero-gradient zero at zero: truncated components
stay exactly zero through local training.

Why this and not FLoRA's stacking (Wang et al. 2024), which stacks the clients' A and B along the
rank axis so the product is averaged exactly: its global adapter grows to the sum of the ranks
and must be merged into the base weights each round, so the base changes and the state's shapes
vary by round, neither of which fits one frozen shared base model and a fixed-shape state. The
price of padding is FedAvg's usual one for LoRA (the mean of the A's and B's is not the mean of
their products), no worse than uniform ranks. And why masks rather than "zero means not owned":
B starts at zero, so zeros are no proof of absence, and an explicit mask lets the screening skip
the zeros a small client sends (they are not a move it made).

Every client uses the global scale alpha / R, so B @ A means the same on every client (what makes
averaging meaningful); a rank-4 client of a rank-16 federation therefore trains at a quarter of
the scale a rank-4 LoRA would use alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from fedcustom.core.config import TrainConfig, check, opt
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.core.types import FitContext, LocalResult, State, is_owned_key, owned_key
from fedcustom.data.batching import Encoded
from fedcustom.methods.lora import Lora, LoraOptions

RANK_ATTRIBUTE = "hetlora_rank"  # on the model: how many rank components it holds now


@dataclass(frozen=True)
class HetLoraOptions(LoraOptions):
    client_ranks: tuple[int, ...] = opt(
        (), "LoRA rank of each client, assigned round-robin (client i trains client_ranks[i % len] "
            "rank components of the global `rank`); empty: every client trains `rank`. The "
            "centralized baseline is client 0")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(all(1 <= r <= self.rank for r in self.client_ranks), "client_ranks",
              f"a list of integers in [1, rank] (rank = {self.rank} is the global rank: set it to the "
              "largest client rank)")


def rank_axes(model: nn.Module) -> dict[str, int]:
    """Every LoRA matrix of `model` by parameter name, with its rank axis (A: 0, B: 1), found by
    walking PEFT's LoRA layers."""
    names = {id(p): n for n, p in model.named_parameters()}
    axes = {}
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for attribute, axis in (("lora_A", 0), ("lora_B", 1), ("lora_embedding_A", 0),
                                ("lora_embedding_B", 1)):
            for part in getattr(module, attribute).values():
                param = part if isinstance(part, nn.Parameter) else part.weight
                axes[names[id(param)]] = axis
    return axes


def prefix_mask(shape: torch.Size, axis: int, rank: int) -> torch.Tensor:
    """A bool mask that broadcasts to `shape`: True on the first `rank` indices of `axis`."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return (torch.arange(shape[axis]) < rank).reshape(view)


@METHODS.register("hetlora")
class HetLora(Lora):
    summary = "LoRA with a rank per client (HetLoRA-style zero-padding, rank-aware FedAvg)"
    exchange = "masked-weights"
    Options = HetLoraOptions
    options: HetLoraOptions

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        setattr(model, RANK_ATTRIBUTE, self.options.rank)
        return model

    def client_rank(self, cid: int) -> int:
        ranks = self.options.client_ranks or (self.options.rank,)
        return ranks[cid % len(ranks)]

    def held_rank(self, model: nn.Module) -> int:
        return getattr(model, RANK_ATTRIBUTE, self.options.rank)

    def truncate(self, model: nn.Module, rank: int) -> None:
        """Keep the first `rank` components of every LoRA matrix, zero the rest."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, axis in rank_axes(model).items():
                p = params[name]
                p.narrow(axis, rank, p.shape[axis] - rank).zero_()
        setattr(model, RANK_ATTRIBUTE, rank)

    def get_state(self, model: nn.Module) -> State:
        state = super().get_state(model)
        rank = self.held_rank(model)
        for name, axis in rank_axes(model).items():
            state[owned_key(name)] = prefix_mask(state[name].shape, axis, rank)
        return state

    def set_state(self, model: nn.Module, state: State) -> None:
        """Load `state` and hold the rank its ownership masks give (zero beyond it): the global
        state's masks are all True (rank R), a client's upload has its own rank."""
        rank = self.rank_of(model, {k: v for k, v in state.items() if is_owned_key(k)})
        super().set_state(model, {k: v for k, v in state.items() if not is_owned_key(k)})
        self.truncate(model, rank)

    def rank_of(self, model: nn.Module, masks: State) -> int:
        """The rank that ownership `masks` give: the same prefix of every LoRA matrix, or an error."""
        axes, params = rank_axes(model), dict(model.named_parameters())
        expected = {owned_key(name) for name in axes}
        if set(masks) != expected:
            missing, extra = sorted(expected - set(masks)), sorted(set(masks) - expected)
            raise UserError(f"state does not match the model's ownership masks: missing {missing}, "
                            f"unexpected {extra}")
        ranks = set()
        for name, axis in axes.items():
            mask = masks[owned_key(name)]
            rank = int(mask.sum())
            if mask.dtype != torch.bool or not torch.equal(mask, prefix_mask(params[name].shape, axis, rank)):
                raise UserError(f"ownership mask of {name} is not a bool mask of the first components "
                                "of its rank axis")
            ranks.add(rank)
        if len(ranks) != 1:
            raise UserError(f"ownership masks disagree on the rank: {sorted(ranks)}")
        return ranks.pop()

    def fit(self, model: nn.Module, data: Encoded, rows: np.ndarray, cfg: TrainConfig,
            ctx: FitContext) -> LocalResult:
        """Client ctx.cid keeps its first r_c components of what it received (fewer if the state
        it received holds fewer: zero components cannot start training) and trains them."""
        self.truncate(model, min(self.client_rank(ctx.cid), self.held_rank(model)))
        return super().fit(model, data, rows, cfg, ctx)
