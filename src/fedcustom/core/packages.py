"""Locating the offline asset packages (models and data shipped inside PyPI wheels)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fedcustom.core.errors import UserError


def package_dir(package: str) -> Path:
    """Folder of an installed asset package, found without importing it (some print or are slow)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"the '{package}' package is not installed; `make install` installs it")
    return Path(spec.origin).parent
