"""Shared fixtures: where the dev data lives, and markers for tests that need a GPU, TensorRT or torch."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEV_DATA = Path(os.environ.get("PROTOSPECT_DEV_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    for marker, text in [
        ("gpu", "needs a CUDA GPU"),
        ("trt", "needs TensorRT"),
        ("slow", "takes more than ~30 s on the 2-core CPU machine"),
        ("devdata", "needs ../shared/data (development data, never shipped)"),
        ("torch", "needs torch (skipped in the torch-free runtime environment)"),
    ]:
        config.addinivalue_line("markers", f"{marker}: {text}")


def dev_category(name: str) -> Path:
    """Path to a dev-data category, or skip the test with the reason."""
    path = DEV_DATA / name
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"dev data not found at {path} (set PROTOSPECT_DEV_DATA); it is never shipped in the repo")
    return path


@pytest.fixture(scope="session")
def dev_data() -> Path:
    if not DEV_DATA.is_dir():
        pytest.skip(f"dev data not found at {DEV_DATA}")
    return DEV_DATA


def has_nvcc() -> bool:
    return shutil.which("nvcc") is not None
