"""THE local training loop. Federated clients and the centralized baseline both run it."""

from __future__ import annotations

import math
import time
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fedcustom.core.config import TrainConfig
from fedcustom.core.device import autocast, model_device
from fedcustom.core.log import bars_off
from fedcustom.core.types import Instructions, LocalResult
from fedcustom.data.batching import Batch, Encoded, train_steps

PLAIN = Instructions()  # no schedule, no proximal term


class Trainable(Protocol):
    """What the loop needs of a method: its trainable tensors and its loss (Method has both)."""

    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]: ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...


def lr_scale(cfg: TrainConfig, server_round: int, rounds: int) -> float:
    """Learning-rate multiplier for round `server_round` of `rounds` (1-based). Centralized runs
    have one round per epoch, so both modes follow the same schedule over the same epochs."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (server_round - 1) / rounds))
    return 1.0


def make_optimizer(model: nn.Module, method: Trainable, cfg: TrainConfig,
                   scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW over the method's tensors; the task head may get its own learning rate."""
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    params = list(method.trainable(model).values())
    groups = [
        {"params": [p for p in params if id(p) not in head_ids], "lr": scale * cfg.lr},
        {"params": [p for p in params if id(p) in head_ids], "lr": scale * (cfg.head_lr or cfg.lr)},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)


def train_local(
    model: nn.Module,
    method: Trainable,
    data: Encoded,
    rows: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    progress: str | None = None,
    instructions: Instructions = PLAIN,
) -> LocalResult:
    """Train the method's tensors of `model` in place on `rows` of `data` for cfg.local_epochs.

    A fresh optimizer per call: clients are stateless between rounds. `seed` fixes the batch
    order and dropout, so the same (config, seed, round, client) gives the same update.
    `instructions` come from the server each round: lr_scale multiplies the learning rates (the
    round's schedule), and prox_mu > 0 (FedProx) adds (mu/2)*||w - w_start||^2, w_start being
    the state on entry.
    The reported loss is the method's loss alone, comparable across strategies. Batches go to
    the model's device; cfg.precision 'bf16' runs the forward pass under bfloat16 autocast.
    An optimizer step sees cfg.batch_size * cfg.grad_accumulation examples, in micro-batches of
    cfg.batch_size whose gradients add up: the update one batch of them would make, up to rounding
    (exactly so for a loss that is a mean over examples; a language model's mean over response
    tokens is weighted by examples across micro-batches).
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = make_optimizer(model, method, cfg, instructions.lr_scale)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    prox_mu = instructions.prox_mu
    start_state = [p.detach().clone() for p in params] if prox_mu > 0 else []
    steps_per_epoch = -(-len(rows) // (cfg.batch_size * cfg.grad_accumulation))
    bar = tqdm(total=steps_per_epoch * cfg.local_epochs, desc=progress, leave=False,
               disable=progress is None or bars_off(), unit="step")
    model.train()
    device = model_device(model)
    total, steps, examples = 0.0, 0, 0
    for _ in range(cfg.local_epochs):
        for micro_batches in train_steps(data, rows, cfg.batch_size, cfg.grad_accumulation, rng):
            optimizer.zero_grad(set_to_none=True)
            size = sum(len(b) for b in micro_batches)
            step_loss = 0.0
            for i, batch in enumerate(micro_batches):
                batch = batch.to(device)
                with autocast(device, cfg.precision):
                    # the step's loss is the mean over its examples: each micro-batch's mean loss
                    # counts by its share of them (1 without accumulation: the batch's own loss)
                    loss = method.loss(model, batch) * (len(batch) / size)
                objective = loss
                if start_state and i == len(micro_batches) - 1:  # once per step
                    drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start_state, strict=True))
                    objective = loss + prox_mu / 2 * drift
                objective.backward()  # gradients add up over the micro-batches
                step_loss += loss.item()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            total += step_loss
            steps += 1
            examples += size
            bar.update()
    bar.close()
    return LocalResult(total / max(steps, 1), steps, examples, time.perf_counter() - start,
                       forward_passes=examples, backward_passes=examples)
