"""fedcustom: federated customization of large models (prefix-tuning, LoRA, prompts, full
fine-tuning, distillation, black-box prompts, RAG) in one harness. See docs/architecture.md; the
Python API (`fedcustom.run`, `fedcustom.study`, `fedcustom.Result`) in docs/python.md.

Kept free of imports: Flower's ClientApp processes import this package first and must not pay
for torch. The API (runs/api.py, which imports torch) loads on first use, through `__getattr__`.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcustom.runs.api import Result, run, study

try:
    __version__ = version("fedcustom")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

# bitsandbytes' CPU backend (model.quantization) warns on import, which PEFT's import triggers in
# every run, that an optional kernel package fetched from a hub is missing; it then uses its own
# kernels. Keep its errors, not that warning.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["Result", "__version__", "run", "study"]
API = ("Result", "run", "study")


def __getattr__(name: str) -> Any:
    if name in API:
        from fedcustom.runs import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedcustom' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
