"""Progress bars only for a person at a terminal: a redirected log never gets carriage-return bars.

Every command uses ``progress_enabled()`` for its own bars; ``quiet_when_redirected()`` (called once by the
CLI) also turns off tqdm bars that library code draws without asking (TQDM_DISABLE, tqdm >= 4.66).
"""
from __future__ import annotations

import os
import sys

_TRUE = ("1", "true", "yes", "on")


def progress_enabled(stream=None) -> bool:
    """True when ``stream`` (default stderr, where tqdm draws) is a terminal and TQDM_DISABLE is not set."""
    stream = sys.stderr if stream is None else stream
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def quiet_when_redirected() -> None:
    """Default every tqdm bar of this process to off when stderr is not a terminal (a user's TQDM_DISABLE wins)."""
    if not progress_enabled():
        os.environ.setdefault("TQDM_DISABLE", "1")
