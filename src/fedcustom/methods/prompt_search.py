"""Federated discrete prompt search: clients score candidate prompts, the server proposes new ones.

A candidate is a row of indices: (template, word for label 0, word for label 1, ...) into the
option pools, so what travels is integers and scores, never text and never client examples.
Each round a client scores every candidate on a sample of its data with forward passes only; the
server (strategies/search.py, `score-search`) averages the scores by examples, keeps the best and
proposes the next set by mutating it. The model evaluates with the server's current best.

Label words do not change the forward pass, only which logits are read: a client runs one
forward per example per distinct template and scores every verbalizer from the same hidden states.
The first candidate set (the method's initialization, like a soft prompt's init) is every template
with the default words plus every single-word change of the default; the server makes all later ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedcustom.core.config import TrainConfig
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.core.types import FitContext, LocalResult, State
from fedcustom.data.batching import Encoded
from fedcustom.methods.blackbox import (
    BlackBoxMethod,
    BlackBoxOptions,
    VerbalizerLM,
    accuracy_and_loss,
    hidden_states,
)

STATE_KEYS = {"candidates", "scores", "best", "pool_sizes"}


# Indices into the template and word pools travel as int16: a round's candidate list is the
# largest part of the payload (26 candidates x 6 pools at the start), and pools hold a handful.
INDEX = torch.int16


@dataclass(frozen=True)
class PromptSearchOptions(BlackBoxOptions):
    pass


def initial_candidates(pool_sizes: list[int]) -> torch.Tensor:
    """The default prompt, each other template with default words, each single-word change."""
    default = [0] * len(pool_sizes)
    rows = [default] + [[t] + default[1:] for t in range(1, pool_sizes[0])]
    for pos in range(1, len(pool_sizes)):
        rows += [default[:pos] + [w] + default[pos + 1:] for w in range(1, pool_sizes[pos])]
    return torch.tensor(rows, dtype=INDEX)


@METHODS.register("prompt-search")
class PromptSearch(BlackBoxMethod):
    summary = "black-box discrete prompt search: clients score templates and label words by forward passes"
    exchange = "scores"
    Options = PromptSearchOptions
    options: PromptSearchOptions

    def prepare(self, model: nn.Module) -> nn.Module:
        super().prepare(model)
        pools = model.pool_sizes()
        candidates = initial_candidates(pools)
        self.set_state(model, {"candidates": candidates,
                               "scores": torch.zeros(len(candidates), dtype=torch.float64),
                               "best": candidates[0].clone(),
                               "pool_sizes": torch.tensor(pools, dtype=INDEX)})
        return model

    def set_state(self, model: nn.Module, state: State) -> None:
        self.check_keys(state, STATE_KEYS)
        pools = torch.tensor(model.pool_sizes(), dtype=INDEX)
        candidates, best = state["candidates"], state["best"]
        if any(state[k].dtype != INDEX for k in ("candidates", "best", "pool_sizes")):
            # e.g. FedAvg's arithmetic turned the indices into floats: only score-search keeps them
            raise UserError("prompt-search state: candidates, best and pool_sizes must be int16 indices "
                            "(use strategy 'score-search'; centralized mode is not supported)")
        if not torch.equal(state["pool_sizes"], pools):
            raise UserError(f"prompt-search state has pool sizes {state['pool_sizes'].tolist()}, "
                            f"the method's options give {pools.tolist()}")
        if candidates.dim() != 2 or candidates.shape[1] != len(pools) or best.shape != pools.shape:
            raise UserError(f"prompt-search candidates must be [K, {len(pools)}] rows of indices")
        if state["scores"].shape != (len(candidates),):
            raise UserError("prompt-search state needs one score per candidate")
        rows = torch.cat([candidates, best.unsqueeze(0)])
        if bool((rows < 0).any() or (rows >= pools).any()):
            raise UserError("prompt-search state holds an index outside the template/word pools")
        model.exchanged = {k: v.clone() for k, v in state.items()}
        model.choice = best.tolist()

    def fit(self, model: nn.Module, data: Encoded, rows: np.ndarray, cfg: TrainConfig,
            ctx: FitContext) -> LocalResult:
        start = time.perf_counter()
        seed = ctx.seed
        sample = self.score_rows(rows, seed)
        candidates = model.exchanged["candidates"]
        scores = torch.zeros(len(candidates), dtype=torch.float64)
        losses = torch.zeros(len(candidates), dtype=torch.float64)
        templates = sorted(set(candidates[:, 0].tolist()))
        for template in templates:
            hidden, labels = hidden_states(model, data, sample, template, cfg.eval_batch_size, cfg.precision)
            for k in (candidates[:, 0] == template).nonzero().flatten().tolist():
                logits = model.label_logits(hidden, candidates[k, 1:].tolist())
                scores[k], losses[k] = accuracy_and_loss(logits, labels)
        model.exchanged["scores"] = scores
        forward_passes = len(sample) * len(templates)
        # The client's loss is that of the candidate it scores best (ties: the earlier one).
        best = int(torch.argmax(scores))
        return LocalResult(float(losses[best]), len(templates), len(sample), time.perf_counter() - start,
                           forward_passes=forward_passes)

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        assert isinstance(model, VerbalizerLM)
        self.export(model, path, {"candidate": model.choice})
