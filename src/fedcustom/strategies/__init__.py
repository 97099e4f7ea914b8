"""Server strategies; importing this package registers every built-in strategy."""

from fedcustom.strategies import fedavg, fedopt, fedprox, robust  # noqa: F401  (register themselves)
from fedcustom.strategies.base import STRATEGIES, Strategy, weighted_mean

__all__ = ["STRATEGIES", "Strategy", "weighted_mean"]
