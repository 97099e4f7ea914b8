"""Experiment configuration: frozen dataclasses with help text, TOML in, `--set a.b=v` overrides.

Every section is a dataclass (core/sections.py); its fields carry their help text in
`metadata["help"]` and are checked when the dataclass is built (core/options.py), so a bad value
fails before any model or data loads. `[method]` and `[strategy]` tables name a registered
component; the remaining keys of the table are that component's own options dataclass. This
module is the one to import from: it holds the experiment and re-exports the sections and the
option helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from fedcustom.core.device import DEVICE_PATTERN
from fedcustom.core.options import (
    ComponentSpec,
    ConfigError,
    FieldError,
    apply_overrides,
    build,
    check,
    coerce,
    component,
    describe,
    opt,
    parse_override,
    read_toml,
    to_dict,
)
from fedcustom.core.registry import ENGINES, METHODS, STRATEGIES
from fedcustom.core.sections import (
    AttackConfig,
    DataConfig,
    FaultsConfig,
    FederationConfig,
    FlowerConfig,
    GenerationConfig,
    ModelConfig,
    PartitionConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "MODES", "AttackConfig", "ComponentSpec", "ConfigError", "DataConfig", "ExperimentConfig",
    "FaultsConfig", "FederationConfig", "FieldError", "FlowerConfig", "GenerationConfig",
    "ModelConfig", "PartitionConfig", "TrackingConfig", "TrainConfig", "apply_overrides", "build",
    "check", "coerce", "component", "describe", "dumps", "load_config", "opt", "parse_override",
    "read_toml", "to_dict",
]

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



def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    raw = read_toml(path) if path is not None else {}
    return build(ExperimentConfig, apply_overrides(raw, list(overrides or [])))


def dumps(cfg: ExperimentConfig) -> str:
    return tomli_w.dumps(to_dict(cfg))
