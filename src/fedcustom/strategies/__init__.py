"""Server strategies; importing this package registers every built-in strategy."""

from fedcustom.strategies import fedavg  # noqa: F401  (registers itself)
from fedcustom.strategies.base import STRATEGIES, Strategy, weighted_mean

__all__ = ["STRATEGIES", "Strategy", "weighted_mean"]
