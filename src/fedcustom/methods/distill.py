"""Federated distillation (FedMD / FedDF style): clients share predictions, not weights.

The exchanged state is one tensor, `logits` [public examples, labels]: predictions on a public
unlabeled proxy set. Its size depends on the public set and the label count only, so clients may
run different models (a backbone cut to its first layers with LoRA, the full backbone with
prefix-tuning, a bag-of-embeddings model...) and a bigger model costs no extra bytes.

Protocol, in terms of the hooks the round loop calls (it knows nothing else):
- Clients are stateful devices: client `cid` owns a model built lazily from its spec
  (options.clients[cid % len]), kept here between rounds.
- `adopt(model, state)` is the server's step on each new consensus (the round loop calls it at
  the start and after every aggregation): the consensus is distilled into the SERVER model (the
  shared `model`, the [model] backbone customized by options.server_method), which is then
  evaluated like any method's global model. An all-zero consensus (the initial state) carries no
  knowledge: it resets the server model to its initialization and drops the client models, so
  every mode of a run starts afresh.
- `set_state(model, state)` is a client's download: the consensus it received, nothing trained.
- `fit(..., ctx)` is client ctx.cid's round: distill toward the consensus it received (skipped while
  that is all zeros), train on its private rows with the shared loop, then predict the public set.
- `get_state` returns what the method currently holds: after fit, the client's predictions (the
  upload); otherwise the last consensus.
Resume: checkpoints hold only the consensus, so a resumed run distills it into a freshly
initialized server model, and client models start again from their initialization.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcustom.core.config import ModelConfig, TrainConfig, check, opt
from fedcustom.core.device import autocast, model_device
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.core.types import FitContext, LocalResult, State
from fedcustom.data.batching import Encoded, encode, eval_batches
from fedcustom.methods.base import Method
from fedcustom.methods.distill_parts import (
    ClientSpec,
    ToTargets,
    build_client_model,
    load_public_texts,
    parse_spec,
)
from fedcustom.methods.training import train_local
from fedcustom.models.backbones import build_classifier

CLIENT_STREAM = 7919  # keep these seeds apart from the engine's (seed, round, client) streams
SERVER_STREAM = 7927


def derived_seed(seed: int, stream: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


@dataclass(frozen=True)
class DistillOptions:
    clients: tuple[str, ...] = opt(
        (), "client model specs, assigned round-robin (client i gets clients[i % len]); each is "
            "key=value words: model (name/path, or 'bow'), layers (first N; 0: all), method (a "
            "weight method), dim (bow width), lr (0: [train] lr), other keys: the method's options. "
            "Empty: every client runs the [model] backbone with server_method")
    server_method: str = opt("lora", "weight method that customizes the server model ([model] backbone)")
    public: str = opt("guardian-headlines", "public unlabeled proxy set: task (the task's own training "
                                            "texts that data.max_train_examples leaves out: in-domain, "
                                            "held by no client), guardian-headlines, movie-plots, or a "
                                            ".txt/.csv/.jsonl path (never the test set)")
    public_text_column: str = opt("text", "text column of a .csv/.jsonl public set")
    public_size: int = opt(1000, "public examples used (a fixed shuffled subset); payload = size x labels")
    temperature: float = opt(1.0, "distillation temperature: soft targets are softmax(consensus / T)")
    distill_epochs: int = opt(1, "passes over the public set a client makes toward the consensus per round")
    distill_lr: float = opt(0.0, "client learning rate while distilling (0: the client's own lr)")
    server_epochs: int = opt(2, "passes over the public set the server makes toward each new consensus")
    server_lr: float = opt(5e-3, "server model's learning rate while distilling")
    server_head_lr: float = opt(0.0, "server model's task-head learning rate while distilling (0: server_lr)")
    batch_size: int = opt(32, "public examples per distillation step")

    def __post_init__(self) -> None:
        check(METHODS.get(self.server_method).exchange == "weights", "server_method",
              "a method that trains weights (lora, prefix, prompt, full)")
        check(self.public_size >= 1, "public_size", "an integer >= 1")
        check(self.temperature > 0, "temperature", "a number > 0")
        check(self.distill_epochs >= 0, "distill_epochs", "an integer >= 0")
        check(self.distill_lr >= 0, "distill_lr", "a number >= 0")
        check(self.server_epochs >= 0, "server_epochs", "an integer >= 0")
        check(self.server_lr > 0, "server_lr", "a number > 0")
        check(self.server_head_lr >= 0, "server_head_lr", "a number >= 0")
        check(self.batch_size >= 1, "batch_size", "an integer >= 1")
        check(bool(self.public.strip()), "public", "a built-in public set name or a path")
        for i, text in enumerate(self.clients):
            parse_spec(text, f"method.clients[{i}]")


@dataclass
class ClientDevice:
    """One client's own model, kept between rounds, and its encodings of the shared data."""

    spec: ClientSpec
    model: nn.Module
    tokenizer: Any
    method: Method
    public: Encoded  # labels are row numbers (the soft targets are looked up by row)
    private: dict[int, Encoded]  # id(shared training data) -> it in this client's tokens


@METHODS.register("distill")
class Distill(Method):
    summary = "federated distillation: clients (heterogeneous models) exchange logits on a public set"
    exchange = "logits"
    own_client_models = True
    Options = DistillOptions
    options: DistillOptions

    @classmethod
    def trains_base(cls, options: DistillOptions) -> bool:
        """The server's method, or a client's (clients load with the server's [model] options)."""
        methods = [options.server_method] + [
            parse_spec(t, f"method.clients[{i}]").method for i, t in enumerate(options.clients)]
        return any(METHODS.get(m).trains_base(METHODS.get(m).Options()) for m in methods)

    def __init__(self, options: DistillOptions) -> None:
        super().__init__(options)
        self.specs = [parse_spec(t, f"method.clients[{i}]") for i, t in enumerate(options.clients)]
        self.server_method = METHODS.get(options.server_method)(
            METHODS.get(options.server_method).Options())
        self.clients: dict[int, ClientDevice] = {}
        self.held: State = {}  # what get_state returns: a client's upload, or the consensus
        self.distillations = 0  # server distillations so far: part of each one's seed
        self.unlabeled: list[str] = []

    def use_unlabeled(self, texts: list[str]) -> None:
        self.unlabeled = list(texts)

    # --- the server model ----------------------------------------------------------------------

    def build_model(self, cfg: ModelConfig, num_labels: int, seed: int) -> tuple[nn.Module, Any]:

        self.model_cfg, self.num_labels, self.seed = cfg, num_labels, seed
        self.public_texts = load_public_texts(self.options.public, self.options.public_text_column,
                                              self.options.public_size, self.unlabeled)
        model, self.tokenizer = build_classifier(cfg, num_labels, seed)
        return model, self.tokenizer

    def prepare(self, model: nn.Module) -> nn.Module:
        self.server_method.prepare(model)
        self.server_initial = self.server_method.get_state(model)
        self.server_public = self.encode_public(self.tokenizer)
        self.held = {"logits": torch.zeros(len(self.public_texts), self.num_labels)}
        return model

    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return self.server_method.trainable(model)

    def get_state(self, model: nn.Module) -> State:
        return {k: v.clone() for k, v in self.held.items()}

    def set_state(self, model: nn.Module, state: State) -> None:
        logits = state.get("logits")
        if set(state) != {"logits"} or logits is None or logits.shape != self.held["logits"].shape:
            raise UserError(f"distill state must be {{'logits': {tuple(self.held['logits'].shape)}}}, "
                            f"got {[(k, tuple(v.shape)) for k, v in state.items()]}")
        self.held = {"logits": logits.clone()}

    def adopt(self, model: nn.Module, state: State) -> None:
        """The server's step on a new consensus: distill it into the server model."""
        self.set_state(model, state)
        logits = self.held["logits"]
        if not logits.any():  # the initial state: start every model afresh
            self.server_method.set_state(model, self.server_initial)
            self.clients.clear()
            return
        self.distillations += 1
        seed = derived_seed(self.seed, SERVER_STREAM, self.distillations)
        self.distill(model, self.server_method, self.server_public, logits, self.options.server_epochs,
                     self.options.server_lr, self.options.server_head_lr, seed)

    def client_model(self, model: nn.Module, cid: int, state: State) -> nn.Module:
        """Client cid's own model (local-only training evaluates it; it must share the server's
        tokenizer, as the test split is encoded with it)."""
        return self.device(cid, model_device(model)).model

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        """The server model, in the server method's format (PEFT's for lora/prefix/prompt)."""
        self.server_method.save_adapter(model, path)

    # --- clients -------------------------------------------------------------------------------

    def fit(self, model: nn.Module, data: Encoded, rows: np.ndarray, cfg: TrainConfig,
            ctx: FitContext) -> LocalResult:
        """Client cid: distill toward the consensus it received, train on its own rows, predict the
        public set. The shared `model` (the server's) is not touched. `seconds` is the whole of it:
        building the client's model on first use, distilling, training and predicting."""
        start = time.perf_counter()
        cid, seed = ctx.cid, ctx.seed
        device = self.device(cid, model_device(model))
        lr = device.spec.lr or cfg.lr
        received = self.held["logits"]
        steps, examples = 0, 0
        if received.any() and self.options.distill_epochs > 0:
            scale = ctx.instructions.lr_scale
            first = self.distill(device.model, device.method, device.public, received,
                                 self.options.distill_epochs, (self.options.distill_lr or lr) * scale,
                                 cfg.head_lr * scale, seed)
            steps, examples = first.steps, first.examples
        private = self.private_data(device, data)
        local = train_local(device.model, device.method, private, rows, replace(cfg, lr=lr), seed + 1,
                            progress=ctx.progress, instructions=ctx.instructions)
        with autocast(model_device(device.model), cfg.precision):
            self.held = {"logits": self.predict(device.model, device.public)}
        trained = examples + local.examples  # one forward and one backward each; predicting: forwards
        return LocalResult(local.loss, steps + local.steps, trained, time.perf_counter() - start,
                           forward_passes=trained + len(device.public), backward_passes=trained)

    def device(self, cid: int, where: torch.device) -> ClientDevice:
        """Client cid's own model, built on first use on `where` (the server model's device)."""
        if cid not in self.clients:
            spec = self.specs[cid % len(self.specs)] if self.specs else ClientSpec(
                method=self.options.server_method)
            model, tokenizer, method = build_client_model(
                spec, self.model_cfg, self.tokenizer, self.num_labels,
                derived_seed(self.seed, CLIENT_STREAM, cid))
            model.to(where)
            self.clients[cid] = ClientDevice(spec, model, tokenizer, method,
                                             self.encode_public(tokenizer), {})
        return self.clients[cid]

    def encode_public(self, tokenizer: Any) -> Encoded:
        texts = self.public_texts
        return encode(texts, range(len(texts)), tokenizer, self.model_cfg.max_length)

    def private_data(self, device: ClientDevice, data: Encoded) -> Encoded:
        """The shared training data in this client's tokens. It arrives in the server tokenizer's
        ids; a client with another vocabulary gets the decoded text re-tokenized (once)."""
        if device.tokenizer is self.tokenizer or device.tokenizer.get_vocab() == self.tokenizer.get_vocab():
            return data
        if id(data) not in device.private:
            texts = [self.tokenizer.decode(ids[:n], skip_special_tokens=True)
                     for ids, n in zip(data.input_ids.tolist(), data.lengths.tolist(), strict=True)]
            device.private = {id(data): encode(texts, data.labels.tolist(), device.tokenizer,
                                               self.model_cfg.max_length)}
        return device.private[id(data)]

    # --- shared by server and clients ----------------------------------------------------------

    def distill(self, model: nn.Module, method: Method, public: Encoded, targets: torch.Tensor,
                epochs: int, lr: float, head_lr: float, seed: int) -> LocalResult:
        """`epochs` passes of the shared loop over the public set toward soft `targets`."""
        if epochs == 0:
            return LocalResult(0.0, 0, 0, 0.0)
        cfg = TrainConfig(lr=lr, head_lr=head_lr, batch_size=self.options.batch_size, local_epochs=epochs)
        loss = ToTargets(method, targets.float(), self.options.temperature)
        return train_local(model, loss, public, np.arange(len(public)), cfg, seed)

    @torch.inference_mode()
    def predict(self, model: nn.Module, public: Encoded) -> torch.Tensor:
        """Logits on every public example, in public-set order (eval batches are length-sorted)."""
        model.eval()
        out = torch.empty(len(public), self.num_labels)
        device = model_device(model)
        for batch in eval_batches(public, np.arange(len(public)), self.options.batch_size * 4):
            on_device = batch.to(device)
            out[batch.labels] = model(on_device.input_ids, on_device.attention_mask).float().cpu()
        return out
