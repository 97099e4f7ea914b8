"""Consensus of client predictions for federated distillation (methods/distill.py).

Clients send logits on the same public examples; the consensus is their weighted mean, either
of the logits themselves or (default) of the probabilities softmax(logits / T), returned as
T * log(mean probability) so that softmax(consensus / T) is exactly the mean probability and the
result is again a logits tensor. Each client counts by its number of training examples
(optionally 1 each), times, per public example, its confidence there when confidence weighting
is on: its top probability (`max_prob`) or 1 - its normalized entropy (`entropy`); a client that
is sure of an example then speaks louder about it. The previous consensus plays no part: every
round's consensus comes from that round's predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from fedcustom.core.config import check, opt
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import State, Update
from fedcustom.strategies.base import Strategy


@dataclass(frozen=True)
class ConsensusOptions:
    average: Literal["probs", "logits"] = opt("probs", "what is averaged: softmax(logits / T), or raw logits")
    temperature: float = opt(1.0, "T: client logits are divided by T before the softmax (average 'probs')")
    confidence: Literal["none", "max_prob", "entropy"] = opt(
        "none", "per-example weight of each client: none, its top probability, or 1 - normalized entropy")
    weight_by_examples: bool = opt(True, "weight each client by its number of training examples (else 1)")

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", "a number > 0")


def client_weights(probs: torch.Tensor, examples: torch.Tensor, confidence: str) -> torch.Tensor:
    """[clients, rows, 1] weights summing to 1 over clients for every row, in float64.

    probs is [clients, rows, labels]. Where every client has confidence 0 on a row (all uniform
    under 'entropy'), that row falls back to the example weights alone."""
    base = examples.view(-1, 1, 1).expand(-1, probs.shape[1], 1)
    if confidence == "max_prob":
        conf = probs.max(dim=-1, keepdim=True).values
    elif confidence == "entropy":
        entropy = -(probs * probs.clamp(min=1e-300).log()).sum(-1, keepdim=True)
        conf = (1 - entropy / math.log(probs.shape[-1])).clamp(min=0.0)
    else:
        conf = torch.ones_like(base)
    weights = base * conf
    total = weights.sum(0, keepdim=True)
    weights = torch.where(total > 0, weights, base)
    return weights / weights.sum(0, keepdim=True)


@STRATEGIES.register("consensus")
class Consensus(Strategy):
    summary = "distillation consensus: weighted mean of client logits or probabilities (T, confidence)"
    accepts = frozenset({"logits"})
    Options = ConsensusOptions
    options: ConsensusOptions

    def aggregate(self, global_state: State, updates: list[Update]) -> State:
        if not updates:
            raise ValueError("cannot aggregate zero client updates")
        t = self.options.temperature
        counts = [float(u.examples) if self.options.weight_by_examples else 1.0 for u in updates]
        examples = torch.tensor(counts, dtype=torch.float64)
        out = {}
        for key, like in global_state.items():
            logits = torch.stack([u.state[key].double() for u in updates])  # [clients, rows, labels]
            probs = torch.softmax(logits / t, dim=-1)
            weights = client_weights(probs, examples, self.options.confidence)
            if self.options.average == "logits":
                mean = (weights * logits).sum(0)
            else:
                mean = t * (weights * probs).sum(0).clamp(min=1e-300).log()
            out[key] = mean.to(like.dtype)
        return out
