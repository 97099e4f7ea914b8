"""Customization methods; importing this package registers every built-in method."""

from fedcustom.methods import full, lora, prefix, prompt  # noqa: F401  (each registers itself)
from fedcustom.methods.base import METHODS, Method, State

__all__ = ["METHODS", "Method", "State"]
