"""Server strategies, one module per family; importing this package registers every built-in one
(core.registry.STRATEGIES does so the first time it is asked for a strategy)."""

from fedcustom.strategies import (  # noqa: F401  (each registers itself)
    consensus,
    fedavg,
    fedopt,
    fedprox,
    privacy,
    robust,
    search,
)
