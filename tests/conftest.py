"""Shared fixtures: where the dev data lives, and markers for tests that need a GPU, TensorRT or torch.

The markers select: `pytest -m "not slow"` is the quick local run (the slow items are the ones over ~10 s
on the 2-core CPU machine), `-m "not devdata"` leaves out the tests on ../shared/data, `-m gpu` / `-m trt`
runs only the GPU / TensorRT items (they skip with the reason without one), `-m "not torch"` the torch-free ones.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devdata import DEV_DATA, dev_category  # noqa: F401  (re-exported for older imports)

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    for marker, text in [
        ("gpu", "needs a CUDA GPU"),
        ("trt", "needs TensorRT"),
        ("slow", "takes more than ~10 s on the 2-core CPU machine (deselect with -m \"not slow\")"),
        ("devdata", "needs ../shared/data (development data, never shipped)"),
        ("torch", "needs torch (skipped in the torch-free runtime environment)"),
    ]:
        config.addinivalue_line("markers", f"{marker}: {text}")


@pytest.fixture(scope="session")
def dev_data() -> Path:
    if not DEV_DATA.is_dir():
        pytest.skip(f"dev data not found at {DEV_DATA}")
    return DEV_DATA


def has_nvcc() -> bool:
    return shutil.which("nvcc") is not None
