"""The sections of an experiment's config ([model], [data], [train], ...): one frozen dataclass
each, every field with its help text and its rule, checked when the section is built."""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from typing import Literal

from fedcustom.core import extras
from fedcustom.core.options import check, opt

DTYPE_NAMES = Literal["fp32", "bf16", "fp16"]
QUANTIZATIONS = Literal["none", "4bit", "8bit"]


@dataclass(frozen=True)
class ModelConfig:
    name: str = opt("minilm", "packaged short name (minilm, smollm2, gemma3-270m), a local directory or a "
                              "hub id")
    max_length: int = opt(64, "tokens per example after truncation")
    pooling: Literal["mean", "cls", "pooler"] = opt(
        "mean", "how token states become one vector for the head: mean, cls, or pooler (the model's "
        "own sequence-classification head; its adapters load with PEFT's AutoPeftModel classes)")
    dtype: DTYPE_NAMES = opt(
        "fp32", "dtype of the frozen base weights: fp32, bf16 or fp16 (half the memory; what a method "
                "trains, its exchanged state and the task head stay fp32). fp16 computes no faster "
                "than fp32 on most CPUs")
    gradient_checkpointing: bool = opt(
        False, "recompute the base's layer activations in the backward pass instead of keeping them "
               "(less memory, about one more forward pass of time; same gradients)")
    quantization: QUANTIZATIONS = opt(
        "none", "load the base's linear layers quantized through bitsandbytes (4bit: NF4, 8bit: "
                "LLM.int8) and prepare it for k-bit training with PEFT; needs the extra `quantization` "
                "and a device bitsandbytes supports; methods that train the base cannot use it")

    def __post_init__(self) -> None:
        check(self.max_length >= 4, "max_length", "an integer >= 4")
        check(self.dtype in typing.get_args(DTYPE_NAMES), "dtype",
              f"one of {list(typing.get_args(DTYPE_NAMES))}")
        check(self.quantization in typing.get_args(QUANTIZATIONS), "quantization",
              f"one of {list(typing.get_args(QUANTIZATIONS))}")
        if self.quantization != "none":  # bitsandbytes installed? (cheap: not imported here)
            extras.check(("bitsandbytes",), f"model.quantization = '{self.quantization}'")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = opt("rotten-tomatoes", "built-in name, or a path to a CSV/JSONL file or HF dataset dir")
    text_column: str = opt("text", "column holding the text (user data)")
    label_column: str = opt("label", "column holding the label (user data)")
    test_fraction: float = opt(0.2, "share of examples held out as the test set (never sent to clients)")
    validation_fraction: float = opt(0.0, "share of the training examples held out for tuning")
    split_seed: int = opt(0, "seed of the train/test split; fixed so every run sees the same test set")
    max_train_examples: int = opt(0, "keep at most this many training examples (0: all)")
    max_test_examples: int = opt(0, "keep at most this many test examples (0: all)")
    max_validation_examples: int = opt(0, "keep at most this many validation examples (0: all)")
    task: Literal["auto", "classification", "generation"] = opt(
        "auto", "what a user file holds: labelled text, or prompt/response pairs (auto: generation "
                "when it has the prompt and response columns; built-in datasets know their task)")
    prompt_column: str = opt("prompt", "column holding the prompt (user generation data)")
    response_column: str = opt("response", "column holding the response (user generation data)")

    def __post_init__(self) -> None:
        check(0 < self.test_fraction < 1, "test_fraction", "a number in (0, 1)")
        check(0 <= self.validation_fraction < 1, "validation_fraction", "a number in [0, 1)")
        check(self.max_train_examples >= 0, "max_train_examples", "an integer >= 0")
        check(self.max_test_examples >= 0, "max_test_examples", "an integer >= 0")
        check(self.max_validation_examples >= 0, "max_validation_examples", "an integer >= 0")


@dataclass(frozen=True)
class PartitionConfig:
    scheme: Literal["iid", "dirichlet", "dirichlet-balanced", "shard"] = opt(
        "iid", "how training data is split over clients: iid (an even random split), dirichlet "
               "(Dirichlet(alpha) on the label; skews client sizes too), dirichlet-balanced "
               "(Dirichlet(alpha) on the label, client sizes kept equal), shard (shards_per_client "
               "label-sorted shards per client, equal sizes)")
    num_clients: int = opt(10, "number of clients")
    alpha: float = opt(1.0, "Dirichlet concentration on the label, schemes dirichlet and "
                            "dirichlet-balanced (smaller: more skew)")
    shards_per_client: int = opt(2, "label-sorted shards per client (scheme 'shard')")
    min_size: int = opt(1, "smallest allowed client dataset; a smaller one is an error")

    def __post_init__(self) -> None:
        check(self.num_clients >= 1, "num_clients", "an integer >= 1")
        check(self.alpha > 0, "alpha", "a number > 0")
        check(self.shards_per_client >= 1, "shards_per_client", "an integer >= 1")
        check(self.min_size >= 1, "min_size", "an integer >= 1")


@dataclass(frozen=True)
class GenerationConfig:
    """Generation tasks only (a causal LM trained on prompt/response pairs)."""

    chat_template: bool = opt(True, "wrap each prompt in the model's chat template when it has one")
    system_prompt: str = opt("", "system message put before each prompt in the chat template "
                                 "(empty: the template's own default, if any)")
    max_response_tokens: int = opt(32, "response tokens kept per example; the prompt gets the rest "
                                       "of model.max_length")
    max_new_tokens: int = opt(24, "tokens generated per test example (greedy)")
    eval_examples: int = opt(24, "test examples generated for ROUGE-L and exact match each round "
                                 "(perplexity uses the whole test set)")
    show_examples: int = opt(3, "generated test examples stored in each round's record")

    def __post_init__(self) -> None:
        check(self.max_response_tokens >= 1, "max_response_tokens", "an integer >= 1")
        check(self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1")
        check(self.eval_examples >= 0, "eval_examples", "an integer >= 0")
        check(0 <= self.show_examples <= self.eval_examples or self.show_examples == 0,
              "show_examples", "an integer in [0, eval_examples]")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = opt(1e-2, "learning rate of the method's trainable tensors (AdamW)")
    head_lr: float = opt(0.0, "learning rate of the task head (0: same as lr)")
    centralized_lr: float = opt(
        0.0, "centralized mode's learning rate (0: lr). One client over all the data takes many more "
             "steps an epoch than a federated client a round, so its best rate can differ: choose it "
             "on the validation split")
    lr_schedule: Literal["constant", "cosine"] = opt(
        "constant", "learning rates over rounds (epochs, centralized): constant, or cosine decay")
    batch_size: int = opt(16, "examples per forward/backward pass (a micro-batch when grad_accumulation > 1)")
    grad_accumulation: int = opt(
        1, "micro-batches of batch_size whose gradients add up to one optimizer step: a step sees "
           "batch_size * grad_accumulation examples, the same ones one batch of that size would hold")
    local_epochs: int = opt(1, "passes over its data a client makes per round")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0: off)")
    eval_batch_size: int = opt(32, "examples per evaluation forward pass (on a CPU, 32 evaluates 1.7-1.9x "
                                   "faster than 256 with the same metrics: python -m benchmarks eval-batch; "
                                   "raise it on a GPU)")
    precision: Literal["auto", "fp32", "bf16"] = opt(
        "auto", "forward passes in training and evaluation: fp32, or bf16 autocast (weights, optimizer "
                "and exchanged state stay fp32); auto: bf16 where the device computes it natively (a CPU "
                "with AVX-512 BF16 or AMX, a GPU with bfloat16), else fp32, decided on each machine")

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "a number > 0")
        check(self.head_lr >= 0, "head_lr", "a number >= 0")
        check(self.centralized_lr >= 0, "centralized_lr", "a number >= 0")
        check(self.batch_size >= 1, "batch_size", "an integer >= 1")
        check(self.grad_accumulation >= 1, "grad_accumulation", "an integer >= 1")
        check(self.local_epochs >= 1, "local_epochs", "an integer >= 1")
        check(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        check(self.max_grad_norm >= 0, "max_grad_norm", "a number >= 0")
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1")


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = opt(5, "communication rounds")
    fraction_fit: float = opt(1.0, "share of clients sampled to train each round")
    max_norm_factor: float = opt(
        10.0, "reject a client update whose distance from the global state exceeds this many times "
              "the round's median distance (rounds with >= 3 valid updates; 0: off)")
    min_clients: int = opt(
        0, "a round in which fewer client updates arrive stops the run after its last checkpoint, to "
           "be resumed (0: no minimum; a round nobody reports in keeps the global state)")
    eval_every: int = opt(
        1, "federated mode: evaluate on the held-out splits every this many rounds, and always before "
           "the first and after the last (1: every round; other rounds' records carry no metrics). "
           "Centralized runs evaluate every round (epoch), local runs after the last round")
    local_clients: int = opt(
        0, "local mode: train and evaluate this many clients, a sample drawn from the seed (0: all); "
           "its records are means over them")
    centralized_patience: int = opt(
        0, "centralized mode: stop once validation accuracy has not improved for this many evaluations "
           "(early stopping, so the baseline is a converged reference; needs data.validation_fraction "
           "> 0; 0: train all rounds)")
    save_every: int = opt(
        0, "also export the adapter every this many rounds, into <mode>/snapshots/round-NNNN "
           "(federated and centralized modes; 0: only the final adapter)")
    save_best: bool = opt(
        True, "also export the adapter of the round with the best validation accuracy so far (the "
              "earliest, if tied) into <mode>/best, with its round in best/round.json: the early-stopped "
              "centralized model, and the federated round a server would keep (needs "
              "data.validation_fraction > 0)")
    update_memory_mb: float = opt(
        256.0, "MB of a round's client updates (payload bytes) the server keeps in memory until they are "
               "aggregated; the others wait in a folder of the system temp dir (TMPDIR: keep it on disk, "
               "not tmpfs) and are read back one tensor at a time, with the same numbers; the folder "
               "goes when the round ends (0: every update to disk)")

    def __post_init__(self) -> None:
        check(self.rounds >= 1, "rounds", "an integer >= 1")
        check(self.save_every >= 0, "save_every", "an integer >= 0")
        check(self.update_memory_mb >= 0, "update_memory_mb", "a number >= 0")
        check(self.eval_every >= 1, "eval_every", "an integer >= 1")
        check(self.centralized_patience >= 0, "centralized_patience", "an integer >= 0")
        check(self.local_clients >= 0, "local_clients", "an integer >= 0")
        check(self.min_clients >= 0, "min_clients", "an integer >= 0")
        check(0 < self.fraction_fit <= 1, "fraction_fit", "a number in (0, 1]")
        check(self.max_norm_factor == 0 or self.max_norm_factor >= 1, "max_norm_factor",
              "0 (off) or a number >= 1")


AttackKind = Literal["none", "sign_flip", "scale", "label_flip", "nan", "inf", "wrong_keys", "wrong_shape",
                     "crash"]


@dataclass(frozen=True)
class AttackConfig:
    """Simulated malicious or faulty clients (federated mode only), to test strategies and checks."""

    kind: AttackKind = opt(
        "none", "what malicious clients do: sign_flip / scale their delta from the global state, "
                "label_flip (train on label+1 mod labels), nan / inf (poisoned values), "
                "wrong_keys / wrong_shape (malformed state), crash (the client fails mid-round)")
    fraction: float = opt(0.2, "share of clients that are malicious (at least one), drawn once from the seed")
    scale: float = opt(10.0, "factor on a malicious delta (kind 'scale'; negative: amplified sign flip)")

    def __post_init__(self) -> None:
        check(0 < self.fraction <= 1, "fraction", "a number in (0, 1]")
        check(math.isfinite(self.scale), "scale", "a finite number")


@dataclass(frozen=True)
class FaultsConfig:
    """Unreliable clients and noisy data (federated mode only), seeded: same config, same faults."""

    dropout: float = opt(0.0, "chance that a sampled client drops out of a round (it never trains)")
    stragglers: float = opt(0.0, "chance that a sampled client misses the round deadline: it trains, "
                                 "but its late update is discarded")
    noisy_clients: float = opt(0.0, "share of clients whose labels are noisy, drawn once per run")
    noise_rate: float = opt(0.5, "share of a noisy client's labels replaced by a uniformly random label")

    def __post_init__(self) -> None:
        check(0 <= self.dropout < 1, "dropout", "a number in [0, 1)")
        check(0 <= self.stragglers < 1, "stragglers", "a number in [0, 1)")
        check(0 <= self.noisy_clients <= 1, "noisy_clients", "a number in [0, 1]")
        check(0 < self.noise_rate <= 1, "noise_rate", "a number in (0, 1]")


@dataclass(frozen=True)
class FlowerConfig:
    """The Flower deployment engine (engine = "flower"): SuperNodes are the clients."""

    connect_timeout: float = opt(120.0, "seconds the server waits at the start for every client's SuperNode")
    round_timeout: float = opt(
        600.0, "seconds the server waits for a round's replies; a client silent by then is recorded "
               "as missing in that round")

    secure_aggregation: bool = opt(
        False, "SecAgg+ (Flower's workflow): the server learns only the example-weighted mean of the "
               "clients' deltas, never one client's update")
    secagg_clip: float = opt(4.0, "secure aggregation clips every delta coordinate to +-this, then quantizes")
    audit_dir: str = opt("", "folder where the server saves every tensor it receives from clients, to "
                             "audit what it sees ('': off)")

    def __post_init__(self) -> None:
        check(self.secagg_clip > 0, "secagg_clip", "a number > 0")
        check(self.connect_timeout > 0, "connect_timeout", "a number of seconds > 0")
        check(self.round_timeout > 0, "round_timeout", "a number of seconds > 0")


TRACKING_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class TrackingConfig:
    """Mirrors of the run's records for TensorBoard and MLflow (runs/tracking.py); the run folder's
    own files stay the results. Needs the extra `tracking`."""

    tensorboard: bool = opt(False, "write TensorBoard event files into RUN/tensorboard/MODE: every "
                                   "number of a round record as a scalar (step = round), the config "
                                   "as text and hparams")
    mlflow: bool = opt(False, "log the run to MLflow: metrics MODE/KEY per round, the config as "
                              "params, the run folder's config, records and summary as artifacts")
    mlflow_uri: str = opt("", "MLflow tracking URI ('': a SQLite store beside the run folder, "
                              "OUTPUT_DIR/mlflow/mlflow.db)")
    experiment: str = opt("", "MLflow experiment ('': the study's name in a study, else 'fedcustom')")

    def __post_init__(self) -> None:
        check(self.mlflow_uri == "" or bool(TRACKING_URI.match(self.mlflow_uri)), "mlflow_uri",
              "'' or a tracking URI with a scheme, e.g. sqlite:///PATH/mlflow.db or http://HOST:5000")
        check(self.experiment == self.experiment.strip(), "experiment",
              "a name without leading or trailing spaces")
