"""Reuses the export tests' generated data and PatchCore artifact (tests/export/export_fixtures.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="calibration tests export a torch model first")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))

from export_fixtures import demo_category, fp32_graph, patchcore  # noqa: E402,F401
