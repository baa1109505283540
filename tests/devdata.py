"""Where the development data lives (never shipped), for tests that use it.

A uniquely named module, not conftest: several test folders have their own conftest.py, so
`from conftest import ...` would resolve to whichever was imported first.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

DEV_DATA = Path(os.environ.get("PROTOSPECT_DEV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def dev_category(name: str) -> Path:
    """Path to a dev-data category, or skip the test with the reason."""
    path = DEV_DATA / name
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"dev data not found at {path} (set PROTOSPECT_DEV_DATA); it is never shipped in the repo")
    return path
