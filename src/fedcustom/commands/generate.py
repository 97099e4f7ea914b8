"""`fedcustom generate --adapter RUN_DIR[/MODE] "text"`: the run's base model plus its saved
adapter, greedy generation for one prompt, formatted as in training (chat template, truncation).

The base model comes from the run's saved config.toml; the adapter is the mode folder's
`adapter/` (PEFT format, or a whole model for full fine-tuning), so what runs here is exactly what
plain transformers + peft load (README, "Generative models").
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedcustom.core.errors import UserError

MODES = ("federated", "centralized")


def locate(path: Path) -> tuple[Path, Path]:
    """(config.toml, adapter folder) of a run folder or of one of its mode folders."""
    if (path / "adapter").is_dir() and (path.parent / "config.toml").is_file():
        return path.parent / "config.toml", path / "adapter"
    if (path / "config.toml").is_file():
        for mode in MODES:
            if (path / mode / "adapter").is_dir():
                return path / "config.toml", path / mode / "adapter"
        raise UserError(f"--adapter {path}: no finished mode ({', '.join(MODES)}) with an adapter/ folder")
    raise UserError(f"--adapter {path}: not a fedcustom run folder (expected config.toml and "
                    "MODE/adapter/)")


def load_tuned(adapter: Path, lm: Any) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if (adapter / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(lm, adapter)
    if (adapter / "config.json").is_file():  # full fine-tuning saves the whole model
        return AutoModelForCausalLM.from_pretrained(adapter)
    raise UserError(f"{adapter}: neither a PEFT adapter nor a saved model (a classification run?)")


def generate(run: str | Path, text: str, max_new_tokens: int | None = None) -> str:
    import torch

    from fedcustom.core.config import load_config
    from fedcustom.data.pairs import prompt_ids
    from fedcustom.models.backbones import load_causal_lm
    from fedcustom.models.lm import LanguageModel

    config, adapter = locate(Path(run))
    cfg = load_config(config)
    gen = cfg.generation if max_new_tokens is None else replace(cfg.generation, max_new_tokens=max_new_tokens)
    lm, tokenizer = load_causal_lm(cfg.model)
    model = LanguageModel(load_tuned(adapter, lm), tokenizer, gen)
    # the prompt budget training used: what the adapter has seen
    ids = prompt_ids(tokenizer, text, cfg.model.max_length - gen.max_response_tokens, gen)
    return model.generate_one(torch.tensor(ids))


def cmd_generate(args: argparse.Namespace) -> None:
    print(generate(args.adapter, args.text, args.max_new_tokens))


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate with a run's base model and saved adapter")
    p.add_argument("--adapter", required=True, metavar="RUN_DIR",
                   help="a run folder (its federated adapter, else centralized) or RUN_DIR/MODE")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="tokens to generate (default: the run's generation.max_new_tokens)")
    p.add_argument("text", help="the prompt")
    p.set_defaults(func=cmd_generate)
