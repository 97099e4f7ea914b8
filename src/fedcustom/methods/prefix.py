"""Prefix-tuning (Li & Liang, 2021) through PEFT: trainable key/value vectors at every layer.

The exchanged state is the raw trainable parameters: the prefix embedding, the reparameterization
MLP when `projection` is on, and the task head. PEFT's own saver writes the MLP's *output*
instead of its weights, which loads for inference but cannot resume training; our state can.

PEFT initializes the prefix at random (N(0, 1) keys and values), which shifts every layer's
attention before any training. `init = "activations"` instead starts from the keys and values the
frozen model itself computes for a short public text, so the prefix first acts like ordinary
context and training starts from features close to the pretrained ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from peft import PrefixTuningConfig
from torch import nn

from fedcustom.core.config import check, opt
from fedcustom.core.errors import UserError
from fedcustom.core.registry import METHODS
from fedcustom.methods.base import Method

KEY_NAMES = ("key", "k_proj", "k_lin")
VALUE_NAMES = ("value", "v_proj", "v_lin")


@dataclass(frozen=True)
class PrefixOptions:
    num_virtual_tokens: int = opt(16, "prefix length: virtual key/value positions per layer")
    projection: bool = opt(False, "reparameterize the prefix through a 2-layer MLP")
    projection_hidden: int = opt(128, "hidden width of the reparameterization MLP")
    init: Literal["random", "activations"] = opt(
        "random", "random (PEFT's default) or the frozen model's own keys/values for init_text")
    init_text: str = opt("The following text is a short piece of writing that people read.",
                         "public text whose activations initialize the prefix (init = activations)")

    def __post_init__(self) -> None:
        check(self.num_virtual_tokens >= 1, "num_virtual_tokens", "an integer >= 1")
        check(self.projection_hidden >= 1, "projection_hidden", "an integer >= 1")
        check(not (self.init == "activations" and self.projection), "init",
              "'random' when projection is on (the MLP's input has no activation space)")
        check(bool(self.init_text.strip()), "init_text", "a non-empty text")


def kv_projections(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """The (key, value) projection of every attention layer, in layer order."""
    pairs = []
    for module in model.modules():
        children = dict(module.named_children())
        key = next((children[n] for n in KEY_NAMES if n in children), None)
        value = next((children[n] for n in VALUE_NAMES if n in children), None)
        if key is not None and value is not None:
            pairs.append((key, value))
    return pairs


def context_keys_values(base: nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the [seq, dim] keys and values attention uses for `ids`.

    Decoders hand them back as their cache (after rotary embeddings, exactly what attention
    reads); encoders have no cache, so the key/value projections' outputs are captured instead
    (position information is already in their inputs).
    """
    pairs = kv_projections(base)
    captured: dict[tuple[int, int], torch.Tensor] = {}
    hooks = [
        proj.register_forward_hook(
            lambda _m, _a, out, key=(layer, kv): captured.__setitem__(key, out[0]))
        for layer, pair in enumerate(pairs) for kv, proj in enumerate(pair)
    ]
    try:
        out = base(input_ids=ids, use_cache=True)
    finally:
        for hook in hooks:
            hook.remove()
    cache = getattr(out, "past_key_values", None)
    if cache is not None:  # [1, heads, seq, head_dim] -> [seq, heads * head_dim]
        flat = lambda t: t[0].transpose(0, 1).flatten(1)  # noqa: E731
        return [(flat(layer.keys), flat(layer.values)) for layer in cache.layers]
    return [(captured[layer, 0], captured[layer, 1]) for layer in range(len(pairs))]


@torch.no_grad()
def init_from_activations(peft_model: nn.Module, text: str) -> None:
    """Write the base model's keys/values for `text` (repeated to length) into the prefix.

    PEFT lays the prefix out as [tokens, layers * (key, value) * dim]."""
    from transformers import AutoTokenizer

    base = peft_model.get_base_model()
    embedding = peft_model.prompt_encoder["default"].embedding.weight
    tokenizer = AutoTokenizer.from_pretrained(base.config.name_or_path)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    layers = context_keys_values(base, ids)
    width = embedding.shape[1] // (2 * max(len(layers), 1))
    if not layers or 2 * len(layers) * width != embedding.shape[1] or layers[0][0].shape[-1] != width:
        raise UserError("method.init = 'activations' does not know this architecture's attention "
                        "layout; use method.init = 'random'")
    rows = torch.arange(embedding.shape[0]) % ids.shape[1]
    for layer, pair in enumerate(layers):
        for kv, acts in enumerate(pair):
            column = (2 * layer + kv) * width
            embedding[:, column : column + width] = acts[rows]


@METHODS.register("prefix")
class Prefix(Method):
    summary = "prefix-tuning: trainable key/value prefixes at every layer (PEFT)"
    Options = PrefixOptions
    options: PrefixOptions
    # the prefix reaches each layer as its key/value cache, which checkpointed layers drop (and PEFT
    # refuses the combination)
    checkpointing = False
    tasks = frozenset({"classification", "generation"})

    def prepare(self, model: nn.Module) -> nn.Module:
        peft_config = PrefixTuningConfig(
            task_type=model.peft_task_type,
            num_virtual_tokens=self.options.num_virtual_tokens,
            prefix_projection=self.options.projection,
            encoder_hidden_size=self.options.projection_hidden,
        )
        self.wrap_peft(model, peft_config)
        if self.options.init == "activations":
            init_from_activations(model.encoder, self.options.init_text)
        return model
