"""Writing a file so that a reader never sees half of it (a kill or a full disk mid-write)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to PATH.part, then rename it over ``path``; on failure remove the part file and
    re-raise, so the previous ``path`` (if any) is left as it was."""
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
