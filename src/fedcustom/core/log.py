"""The `fedcustom` logger. As a library, fedcustom logs and prints nothing unless the application
configures logging; the command line shows INFO messages on stdout (-q: warnings only and no
progress bars, -v: debug messages too)."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("fedcustom")
_quiet = False  # -q: no progress bars either
_bars = True  # False in a worker process: bars of several processes would garble one terminal


def bars_off() -> bool:
    """Whether progress bars are switched off (`fedcustom -q`, or in a worker process)."""
    return _quiet or not _bars


def no_bars() -> None:
    """This process shows no progress bars (a worker process of the simulation engine)."""
    global _bars
    _bars = False


def info(*parts: object) -> None:
    """A `log` callable for runs and studies: print-like arguments, logged at INFO."""
    logger.info(" ".join(str(p) for p in parts))


def configure_cli(verbosity: int) -> None:
    """-q (verbosity < 0), default (0), -v (> 0): one handler on the current stdout."""
    global _quiet
    _quiet = verbosity < 0
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers = [handler]
    logger.propagate = False
    # a library that calls logging.config.dictConfig (default disable_existing_loggers=True)
    # after fedcustom's logger exists silences it: the command line turns it back on
    logger.disabled = False
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
