"""Customization methods; importing this package registers every built-in method."""

from fedcustom.methods import prefix  # noqa: F401  (registers itself)
from fedcustom.methods.base import METHODS, Method, State

__all__ = ["METHODS", "Method", "State"]
