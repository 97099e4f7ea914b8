"""Customization methods; importing this package registers every built-in method."""

from fedcustom.methods import (  # noqa: F401  (each registers itself)
    bbpt,
    distill,
    full,
    lora,
    prefix,
    prompt,
    prompt_search,
)
from fedcustom.methods.base import METHODS, Method, State

__all__ = ["METHODS", "Method", "State"]
