"""Small real filesystems for full-disk and read-only tests: a tmpfs mounted for the test (needs root and
`mount -t tmpfs`; the tests skip with the reason where the machine does not allow it)."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


def can_mount() -> str | None:
    """None when tmpfs mounts work here, else the reason they do not."""
    if os.name != "posix" or os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    probe = Path("/tmp") / f"protospect-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe)], capture_output=True, text=True)
        if out.returncode != 0:
            return f"mount -t tmpfs failed: {out.stderr.strip() or out.returncode}"
        subprocess.run(["umount", str(probe)], check=False)
        return None
    except FileNotFoundError:
        return "no mount command"
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


@contextlib.contextmanager
def tmpfs(where: Path, size_bytes: int):
    """Mount a tmpfs of ``size_bytes`` at ``where`` (created) for the block; skip the test if impossible."""
    why = can_mount()
    if why:
        pytest.skip(f"no small filesystem for a full-disk test: {why}")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(4096, size_bytes)}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_readonly(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def fill(where: Path, leave_bytes: int = 0) -> None:
    """Fill the filesystem at ``where`` up to ``leave_bytes`` free (a file named .filler)."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    n = max(0, free - leave_bytes)
    with contextlib.suppress(OSError), open(where / ".filler", "wb") as f:
        f.write(b"\0" * n)
