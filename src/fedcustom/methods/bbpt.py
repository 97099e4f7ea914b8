"""Federated black-box soft-prompt tuning (FedBPT-style; BBT, Sun et al. 2022): a soft prompt
searched with CMA-ES in a low-dimensional space, using forward passes only.

The prompt is P virtual input embeddings p = p0 + A z: p0 are the embeddings of `init_text`'s
tokens, A is a fixed random projection regenerated from `projection_seed` on every party (it
never travels), and z (`intrinsic_dim` numbers) is all that is exchanged. Each round a client runs
a few CMA-ES generations (the `cma` package) from the global z on a sample of its data, minimizing
the label-word cross-entropy, and returns the best z it evaluated (the start if nothing beat it);
the server averages the z's (FedAvg). The template and label words are the defaults (the first).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from fedcustom.core.config import TrainConfig, check, opt
from fedcustom.core.errors import UserError
from fedcustom.core.extras import require
from fedcustom.core.registry import METHODS
from fedcustom.core.types import FitContext, LocalResult, State
from fedcustom.data.batching import Encoded
from fedcustom.methods.blackbox import (
    BlackBoxMethod,
    BlackBoxOptions,
    VerbalizerLM,
    accuracy_and_loss,
    hidden_states,
    prompt_embeddings,
)


@dataclass(frozen=True)
class BbptOptions(BlackBoxOptions):
    num_virtual_tokens: int = opt(5, "soft prompt length P: virtual input embeddings before the template")
    intrinsic_dim: int = opt(64, "size of z, the exchanged vector; the prompt is p0 + A z")
    sigma: float = opt(0.5, "CMA-ES initial step size in z (1 moves the prompt by about one embedding std)")
    popsize: int = opt(6, "CMA-ES candidates per generation")
    generations: int = opt(2, "CMA-ES generations per client per round")
    init_text: str = opt("Decide whether the movie review is positive or negative.",
                         "text whose token embeddings are p0 (repeated or cut to num_virtual_tokens)")
    projection_seed: int = opt(0, "seed of the fixed random projection A (the same on every party)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_virtual_tokens >= 1, "num_virtual_tokens", "an integer >= 1")
        check(self.intrinsic_dim >= 2, "intrinsic_dim", "an integer >= 2")
        check(self.sigma > 0, "sigma", "a number > 0")
        check(self.popsize >= 2, "popsize", "an integer >= 2")
        check(self.generations >= 1, "generations", "an integer >= 1")
        check(bool(self.init_text.strip()), "init_text", "a non-empty text")


@METHODS.register("bbpt", needs=("cma",))
class Bbpt(BlackBoxMethod):
    summary = "black-box soft prompt: CMA-ES on clients in a random low-dimensional subspace, FedAvg of z"
    Options = BbptOptions
    options: BbptOptions

    def build_model(self, cfg: Any, num_labels: int, seed: int) -> tuple[nn.Module, Any]:
        model, tokenizer = super().build_model(cfg, num_labels, seed)
        o = self.options
        embeddings = model.lm.get_input_embeddings().weight.detach()
        model.prompt_init = prompt_embeddings(model, tokenizer, o.init_text, o.num_virtual_tokens)
        # Entries N(0, std^2/d): a unit step in z moves each prompt entry by about one embedding std.
        generator = torch.Generator().manual_seed(o.projection_seed)
        scale = float(embeddings.std()) / math.sqrt(o.intrinsic_dim)
        model.projection = scale * torch.randn(
            o.num_virtual_tokens * embeddings.shape[1], o.intrinsic_dim, generator=generator)
        return model, tokenizer

    def prepare(self, model: nn.Module) -> nn.Module:
        super().prepare(model)
        self.set_state(model, {"z": torch.zeros(self.options.intrinsic_dim)})
        return model

    def set_state(self, model: nn.Module, state: State) -> None:
        self.check_keys(state, {"z"})
        z = state["z"]
        if z.shape != (self.options.intrinsic_dim,) or z.dtype != torch.float32:
            raise UserError(f"bbpt z must be float32 of shape ({self.options.intrinsic_dim},), "
                            f"got {z.dtype} {tuple(z.shape)}")
        model.exchanged = {"z": z.clone()}
        model.soft_prompt = model.prompt_init + (model.projection @ z).view_as(model.prompt_init)

    def fit(self, model: nn.Module, data: Encoded, rows: np.ndarray, cfg: TrainConfig,
            ctx: FitContext) -> LocalResult:
        start = time.perf_counter()
        seed = ctx.seed
        sample = self.score_rows(rows, seed)
        o = self.options

        def loss_of(z: np.ndarray) -> float:
            self.set_state(model, {"z": torch.as_tensor(z, dtype=torch.float32)})
            hidden, labels = hidden_states(model, data, sample, model.choice[0], cfg.eval_batch_size,
                                           cfg.precision)
            return accuracy_and_loss(model.label_logits(hidden, model.choice[1:]), labels)[1]

        z0 = model.exchanged["z"].double().numpy()
        best_z, best_loss = z0, loss_of(z0)
        # cma draws from its own seeded generator; seed 0 would mean "from the clock" there.
        cma = require("cma", "method 'bbpt'")
        es = cma.CMAEvolutionStrategy(z0, o.sigma, {"popsize": o.popsize, "seed": seed % (2**31 - 2) + 1,
                                                   "verbose": -9})
        for _ in range(o.generations):
            solutions = es.ask()
            losses = [loss_of(z) for z in solutions]
            es.tell(solutions, losses)
            i = int(np.argmin(losses))
            if losses[i] < best_loss:
                best_z, best_loss = solutions[i], losses[i]
        self.set_state(model, {"z": torch.as_tensor(best_z, dtype=torch.float32)})
        forward_passes = len(sample) * (1 + o.popsize * o.generations)
        return LocalResult(best_loss, o.generations, len(sample), time.perf_counter() - start,
                           forward_passes=forward_passes)

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        """prompt.json, and soft_prompt.safetensors: the [P, hidden] input embeddings to prepend."""
        assert isinstance(model, VerbalizerLM) and model.soft_prompt is not None
        self.export(model, path, {"num_virtual_tokens": self.options.num_virtual_tokens,
                                  "z_norm": float(model.exchanged["z"].norm())})
        save_file({"soft_prompt": model.soft_prompt.contiguous()}, path / "soft_prompt.safetensors")
