"""The Method interface: what is trainable and what travels between clients and server.

A method wraps and freezes a task model (`prepare`), names its exchanged state (`get_state` /
`set_state`: by default every tensor with requires_grad, found by walking the model), and gives
the one loss the shared training loop calls. Engines and strategies know nothing else about it.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from fedcustom.core.config import ModelConfig, TrainConfig
from fedcustom.core.errors import UserError
from fedcustom.core.io import atomic_write
from fedcustom.core.types import FitContext, LocalResult, State
from fedcustom.data.batching import Batch, Encoded
from fedcustom.methods.training import train_local
from fedcustom.models.backbones import TaskModel, build_classifier
from fedcustom.models.evaluation import evaluate_classifier


class Method(ABC):
    name: ClassVar[str]  # set by the registry from the registered name
    summary: ClassVar[str]
    # What the method exchanges: weights | masked-weights (weights with ownership masks, see
    # core.types.owned_key) | logits | scores | none (see DESIGN.md).
    exchange: ClassVar[str] = "weights"
    # True: each client keeps its own model between rounds and the exchanged state is not that
    # model (distillation's logits). A client training alone then receives nothing back, and
    # clients train in the server's process (the simulation engine's `workers` need a client's
    # work to depend only on what it receives: state, rows, seed).
    own_client_models: ClassVar[bool] = False
    # The task kinds (fedcustom.tasks) the method can train: its model builder and loss fit these.
    tasks: ClassVar[frozenset[str]] = frozenset({"classification"})
    Options: ClassVar[type]
    # Whether its model trains with the base's layers checkpointed (model.gradient_checkpointing)
    checkpointing: ClassVar[bool] = True

    def __init__(self, options: object) -> None:
        self.options = options

    @classmethod
    def trains_base(cls, options: Any) -> bool:
        """Whether the method trains the base model's own weights (then they must load in fp32 and
        unquantized: ModelConfig.dtype and quantization apply to a frozen base)."""
        return False

    def build_model(self, cfg: ModelConfig, num_labels: int, seed: int) -> tuple[nn.Module, Any]:
        """The task model (before `prepare`) and its tokenizer. Default: backbone + classifier head."""

        return build_classifier(cfg, num_labels, seed)

    def use_unlabeled(self, texts: list[str]) -> None:
        """Offered before build_model: unlabeled texts of the task's own corpus that no client holds
        and no split evaluates (TaskData.unlabeled). Default: not used."""
        del texts

    def client_model(self, model: nn.Module, cid: int, state: State) -> nn.Module:
        """The model client `cid` predicts with once it holds `state` (local-only training evaluates
        it). Default: the shared model with the state loaded; a method whose clients keep their own
        models (distillation) returns that client's."""
        self.set_state(model, state)
        return model

    def evaluate(self, model: nn.Module, data: Encoded, batch_size: int) -> dict[str, float]:
        """Metrics of `model` on held-out `data` (names without the split prefix)."""

        if isinstance(model, TaskModel):  # the task (classification, generation) knows its metrics
            return model.evaluate(data, batch_size)
        return evaluate_classifier(model, data, batch_size)

    @abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """Wrap and freeze `model` so exactly the method's tensors require grad."""

    @staticmethod
    def wrap_peft(model: nn.Module, peft_config: Any) -> nn.Module:
        """Wrap the task model's transformer with PEFT and train its task head, if it has one."""
        from peft import get_peft_model

        with warnings.catch_warnings():  # PEFT asks transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model.encoder = get_peft_model(model.encoder, peft_config)
        head = getattr(model, "head", None)
        if head is not None:
            head.requires_grad_(True)
        return model

    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def get_state(self, model: nn.Module) -> State:
        # Always a CPU copy: payloads, strategies and checkpoints never see a GPU tensor.
        return {n: p.detach().to("cpu", copy=True) for n, p in self.trainable(model).items()}

    def set_state(self, model: nn.Module, state: State) -> None:
        params = self.trainable(model)
        if set(params) != set(state):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise UserError(f"state does not match the model: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for name, param in params.items():
                if param.shape != state[name].shape:
                    raise UserError(
                        f"state tensor {name} has shape {tuple(state[name].shape)}, "
                        f"model expects {tuple(param.shape)}"
                    )
                param.copy_(state[name])

    def fit(self, model: nn.Module, data: Encoded, rows: np.ndarray, cfg: TrainConfig,
            ctx: FitContext) -> LocalResult:
        """Client ctx.cid's local work on `rows` of `data`, in place on `model`. Gradient methods
        use the shared loop (training.train_local); a method that trains differently (forward-only
        search, distillation, per-client models) overrides this, and engines call nothing else."""
        return train_local(model, self, data, rows, cfg, ctx.seed, progress=ctx.progress,
                           instructions=ctx.instructions)

    def adopt(self, model: nn.Module, state: State) -> None:
        """The server's step when a new global state exists (the start of a run, and after every
        aggregation), before it is evaluated: load it into the model. A method whose server does
        more (distillation trains its server model toward a new consensus) overrides this.
        Clients receive the state with `set_state`."""
        self.set_state(model, state)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:

        if isinstance(model, TaskModel):  # e.g. a language model's response-only loss
            return model.loss(batch)
        return F.cross_entropy(model(batch.input_ids, batch.attention_mask), batch.labels)

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        """Export for use outside fedcustom. PEFT-wrapped encoders are written in PEFT's format,
        naming the base model portably (see models.backbones.portable_name); a separate task head
        (mean or cls pooling) goes in head.safetensors."""
        from peft import PeftModel

        path.mkdir(parents=True, exist_ok=True)
        encoder = getattr(model, "encoder", None)
        if isinstance(encoder, PeftModel):
            encoder.save_pretrained(path)
            name_base_model(path, getattr(model, "base_name", ""))
        head = getattr(model, "head", None)
        if head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                      path / "head.safetensors")



def name_base_model(adapter_dir: Path, name: str) -> None:
    """Point a saved PEFT adapter (its config and model card) at `name` instead of the path the
    base model was read from on this machine."""
    if not name:
        return
    from huggingface_hub import ModelCard

    config = adapter_dir / "adapter_config.json"
    atomic_write(config, json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": name},
                                    indent=2, sort_keys=True) + "\n")
    card_file = adapter_dir / "README.md"
    if card_file.is_file():
        card = ModelCard.load(card_file)
        card.data["base_model"] = name
        atomic_write(card_file, str(card))
