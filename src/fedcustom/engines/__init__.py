"""Engines: where clients run. Importing this package registers every built-in engine."""

from fedcustom.engines import flower, simulation  # noqa: F401  (register themselves)
from fedcustom.engines.base import ENGINES, Client, Engine, Job

__all__ = ["ENGINES", "Client", "Engine", "Job"]
