"""Customization methods, one module each; importing this package registers every built-in one
(core.registry.METHODS does so the first time it is asked for a method)."""

from fedcustom.methods import (  # noqa: F401  (each registers itself)
    bbpt,
    distill,
    full,
    hetlora,
    lora,
    prefix,
    prompt,
    prompt_search,
    vprompt,
)
