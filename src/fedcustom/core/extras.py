"""Optional third-party packages: which extra of pyproject.toml installs each, and the one-line error
that names it.

`pip install fedcustom` runs the in-process engine with the methods that exchange weights and the
strategies that average them. A component that needs more says so where it registers
(`@METHODS.register("bbpt", needs=("cma",))`, or a registry's `Builtin` for a module that imports
the package at its top); building a config checks those needs before any model or data loads.
Where the package is used, `require` imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from types import ModuleType

from fedcustom.core.errors import UserError

# import name -> the extra of pyproject.toml that installs it (tests/test_extras.py checks pyproject)
EXTRAS: dict[str, str] = {
    "flwr": "flower",
    "ray": "flower",  # comes with flwr[simulation]
    "opacus": "privacy",
    "faiss": "rag",  # faiss-cpu
    "cma": "blackbox",
    "rouge_score": "generation",  # rouge-score
    "gguf": "generation",
    "tensorboard": "tracking",
    "mlflow": "tracking",  # mlflow-skinny
    "sqlalchemy": "tracking",  # MLflow's SQLite store
    "alembic": "tracking",
    "bitsandbytes": "quantization",  # model.quantization (4- and 8-bit base weights)
}


def top(module: str) -> str:
    return module.partition(".")[0]


def installed(module: str) -> bool:
    """Whether `module` can be found, without importing it (cheap enough for every config build)."""
    if top(module) in sys.modules:
        return sys.modules[top(module)] is not None  # None: an import of it is to fail
    try:
        return importlib.util.find_spec(top(module)) is not None
    except (ImportError, ValueError):
        return False


def message(module: str, what: str) -> str:
    return f"{what} needs the optional package {top(module)}: pip install 'fedcustom[{EXTRAS[top(module)]}]'"


def check(modules: Iterable[str], what: str) -> None:
    """Raise a one-line UserError naming the extra of the first of `modules` that is not installed."""
    for module in modules:
        if top(module) not in EXTRAS:
            raise ValueError(f"{module} is no optional package of fedcustom (add it to core.extras.EXTRAS)")
        if not installed(module):
            raise UserError(message(module, what))


def require(module: str, what: str) -> ModuleType:
    """Import `module` (e.g. "cma", "opacus.accountants"), or say in one line which extra installs it."""
    check((module,), what)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or top(e.name) != top(module):
            raise  # the package is there but broken (one of its own dependencies is missing)
        raise UserError(message(module, what)) from None


def missing_extra(error: ModuleNotFoundError, what: str) -> str | None:
    """The one-line message for an optional package found missing at import time (None: not one)."""
    if error.name is None or top(error.name) not in EXTRAS:
        return None
    return message(error.name, what)
