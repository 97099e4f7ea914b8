"""Server strategies; importing this package registers every built-in strategy."""

from fedcustom.strategies import (  # noqa: F401  (register themselves)
    consensus,
    fedavg,
    fedopt,
    fedprox,
    privacy,
    robust,
    search,
)
from fedcustom.strategies.base import STRATEGIES, Strategy, weighted_mean

__all__ = ["STRATEGIES", "Strategy", "weighted_mean"]
