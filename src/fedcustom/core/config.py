"""Experiment configuration: frozen dataclasses with help text, TOML in, `--set a.b=v` overrides.

Every section is a dataclass; its fields carry their help text in `metadata["help"]` and are
checked when the dataclass is built, so a bad value fails before any model or data loads.
`[method]` and `[strategy]` tables name a registered component; the remaining keys of the
table are that component's own options dataclass.
"""

from __future__ import annotations

import math
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w

from fedcustom.core import extras
from fedcustom.core.device import DEVICE_PATTERN
from fedcustom.core.errors import UserError
from fedcustom.core.registry import ENGINES, METHODS, STRATEGIES


class ConfigError(UserError):
    pass


class FieldError(ValueError):
    """Raised by a dataclass's checks; the builder adds the section path to the message."""

    def __init__(self, name: str, expected: str) -> None:
        super().__init__(name)
        self.name, self.expected = name, expected


def opt(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    return field(default=default, metadata={"help": help})


def check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise FieldError(name, expected)


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
    lr_schedule: Literal["constant", "cosine"] = opt(
        "constant", "learning rates over rounds (epochs, centralized): constant, or cosine decay")
    batch_size: int = opt(16, "examples per forward/backward pass (a micro-batch when grad_accumulation > 1)")
    grad_accumulation: int = opt(
        1, "micro-batches of batch_size whose gradients add up to one optimizer step: a step sees "
           "batch_size * grad_accumulation examples, the same ones one batch of that size would hold")
    local_epochs: int = opt(1, "passes over its data a client makes per round")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0: off)")
    eval_batch_size: int = opt(256, "examples per evaluation forward pass")
    precision: Literal["auto", "fp32", "bf16"] = opt(
        "auto", "forward passes in training and evaluation: fp32, or bf16 autocast (weights, optimizer "
                "and exchanged state stay fp32); auto: bf16 where the device computes it natively (a CPU "
                "with AVX-512 BF16 or AMX, a GPU with bfloat16), else fp32, decided on each machine")

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "a number > 0")
        check(self.head_lr >= 0, "head_lr", "a number >= 0")
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


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component (method or strategy) by name, with its own options dataclass."""

    name: str
    options: Any


# federated: the clients train together through the strategy; centralized: one client holds all
# training data (the reference); local: every client trains alone on its own data (no federation)
MODES = ("federated", "centralized", "local")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = opt("experiment", "run name; the run folder is OUTPUT_DIR/NAME")
    seed: int = opt(0, "seed of client sampling, shuffling and initialization")
    modes: tuple[str, ...] = opt(("federated",), "what to run: federated, centralized and/or local "
                                                  "(each client alone on its own data)")
    engine: str = opt("simulation", "where clients run")
    output_dir: str = opt("runs", "folder that receives the run folder")
    threads: int = opt(0, "torch CPU threads (0: all cores)")
    workers: int = opt(
        1, "processes that train a round's clients in parallel (engine 'simulation', on the CPU): "
           "forks sharing the base model's memory, one torch thread each; the numbers stay those of "
           "1 (0: one per core)")
    device: str = opt("auto", "where the model computes: auto (a GPU if present, else cpu), cpu, cuda or "
                              "cuda:N")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    method: ComponentSpec = field(default_factory=lambda: component("method", {}))
    strategy: ComponentSpec = field(default_factory=lambda: component("strategy", {}))
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check(bool(self.modes) and set(self.modes) <= set(MODES), "modes",
              f"a non-empty list drawn from {list(MODES)}")
        check(self.threads >= 0, "threads", "an integer >= 0")
        check(self.workers >= 0, "workers", "an integer >= 0 (0: one per core)")
        check(self.federation.centralized_patience == 0 or self.data.validation_fraction > 0,
              "federation.centralized_patience", "0 without a validation split (data.validation_fraction)")
        check(bool(DEVICE_PATTERN.match(self.device)), "device", "auto, cpu, cuda or cuda:N")
        check(bool(self.name) and "/" not in self.name, "name", "a non-empty name without '/'")

        check(self.engine in ENGINES.names(), "engine", f"one of {ENGINES.names()}")
        check(self.workers == 1 or self.engine == "simulation", "workers",
              f"1 with engine '{self.engine}' (workers are the in-process engine's; "
              "engine 'simulation')")

        # require: a component whose optional package is missing fails here, naming the extra
        method = METHODS.require(self.method.name)
        strategy = STRATEGIES.require(self.strategy.name)
        check(method.exchange in strategy.accepts, "strategy",
              f"a strategy that accepts '{method.exchange}' payloads "
              f"('{self.strategy.name}' accepts {sorted(strategy.accepts)})")
        engine = ENGINES.require(self.engine)
        check(method.exchange in engine.exchanges, "engine",
              f"an engine that carries '{method.exchange}' payloads ('{self.engine}' carries "
              f"{sorted(engine.exchanges)})")
        if self.flower.secure_aggregation:
            check(self.engine.startswith("flower"), "flower.secure_aggregation",
                  "false: secure aggregation runs on the Flower engines (engine = 'flower')")
            check(strategy.on_the_mean(self.strategy.options), "strategy",
                  f"a strategy that needs only the clients' mean with secure aggregation "
                  f"('{self.strategy.name}' needs each client's update)")
            check(self.attack.kind == "none", "attack", "'none' with secure aggregation")
        problem = strategy.config_problem(self.strategy.options, self)
        if problem is not None:
            raise ConfigError(problem)
        check(method.checkpointing or not self.model.gradient_checkpointing, "model.gradient_checkpointing",
              f"false with method '{self.method.name}': its trained tensors reach the layers as their "
              "key/value cache, which checkpointed layers drop")
        if method.trains_base(self.method.options):  # its trained weights would be half or k-bit
            check(self.model.dtype == "fp32", "model.dtype",
                  f"'fp32' with method '{self.method.name}': it trains the base weights, which stay fp32 "
                  "(train.precision = 'bf16' computes in bfloat16)")
            check(self.model.quantization == "none", "model.quantization",
                  f"'none' with method '{self.method.name}': it trains the base weights, and quantized "
                  "weights cannot be trained")
        check(self.attack.kind == "none" or method.exchange == "weights", "attack",
              f"no attack: method '{self.method.name}' exchanges '{method.exchange}', attacks need 'weights'")


    @property
    def clients_per_round(self) -> int:
        """How many clients a federated round samples (federation.rounds.sample_clients)."""
        return max(1, round(self.federation.fraction_fit * self.partition.num_clients))


# --- building from TOML ------------------------------------------------------------------------

DEFAULT_COMPONENTS = {"method": "prefix", "strategy": "fedavg"}


def component(kind: str, raw: Any, where: str = "") -> ComponentSpec:

    registry = {"method": METHODS, "strategy": STRATEGIES}[kind]
    where = where or f"{kind}."
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where.rstrip('.')}' must be a table, got {raw!r}")
    name = raw.get("name", DEFAULT_COMPONENTS[kind])
    if not isinstance(name, str):
        raise ConfigError(f"{where}name = {name!r}: expected one of {registry.names()}")
    options = {k: v for k, v in raw.items() if k != "name"}
    return ComponentSpec(name, build(registry.require(name).Options, options, where))


def build(cls: type, raw: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, naming the offending key in every error."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where.rstrip('.') or 'config'}' must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown key '{where}{key}'; expected one of: {', '.join(known)}")
        hint = hints[key]
        if hint is ComponentSpec:
            kwargs[key] = component(key, value, f"{where}{key}.")
        elif is_dataclass(hint):
            kwargs[key] = build(hint, value, f"{where}{key}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = coerce(value, hint, f"{where}{key}")
    try:
        return cls(**kwargs)
    except FieldError as e:
        got = given(cls, kwargs, e.name)
        raise ConfigError(f"{where}{e.name} = {got!r}: expected {e.expected}") from None


def given(cls: type, kwargs: dict[str, Any], name: str) -> Any:
    """The value of field `name` (dotted: a field of a section) that cls(**kwargs) was given."""
    head, *rest = name.split(".")
    if head in kwargs:
        value = kwargs[head]
    else:
        f = next((f for f in fields(cls) if f.name == head), None)
        value = None if f is None else f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
    for part in rest:
        value = getattr(value, part, None)
    return value


def coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r}: expected one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} = {value!r}: expected a list")
        return tuple(coerce(v, args[0], key) for v in value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if ok is None:
        raise TypeError(f"config field {key} has unsupported type {hint}")
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected {getattr(hint, '__name__', hint)}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: expected a finite number")
    return float(value) if hint is float else value


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=v` -> (["a", "b"], v), with v read as a TOML value (bare words are strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. federation.rounds=3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    try:  # a TOML key: dotted, and parts may be quoted (grid."partition.alpha")
        nested, path = tomllib.loads(f"{key.strip()} = 0"), []
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"--set {text!r}: {key.strip()!r} is not a valid key") from None
    while isinstance(nested, dict):
        (part, nested), = nested.items()
        path.append(part)
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        table = raw
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a table")
        table[path[-1]] = value
    return raw


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    raw = read_toml(path) if path is not None else {}
    return build(ExperimentConfig, apply_overrides(raw, list(overrides or [])))


def to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, ComponentSpec):
            out[f.name] = {"name": value.name, **asdict(value.options)}
        elif is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def dumps(cfg: ExperimentConfig) -> str:
    return tomli_w.dumps(to_dict(cfg))


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field, for `fedcustom methods` and docs."""
    rows = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else "(table)"
        rows.append((prefix + f.name, default, f.metadata.get("help", "")))
    return rows
