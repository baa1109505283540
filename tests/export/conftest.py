"""Session fixtures: a generated demo category, a PatchCore artifact fitted on it, its FP32 graph."""
from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="export tests need torch (training extra)")

# tests/export is on sys.path under pytest's prepend mode.
from export_fixtures import demo_category, fp32_graph, patchcore  # noqa: E402,F401
