"""Reuses the export tests' generated data and PatchCore artifact (tests/export/export_fixtures.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="calibration tests export a torch model first")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))

import export_fixtures as fx  # noqa: E402


@pytest.fixture(scope="session")
def demo_category(tmp_path_factory):
    return fx.write_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def patchcore(demo_category, tmp_path_factory):
    return fx.fit_patchcore_artifact(demo_category, tmp_path_factory.mktemp("art") / "patchcore")


@pytest.fixture(scope="session")
def fp32_graph(patchcore, tmp_path_factory):
    from protospect.export.onnx_export import onnx_from_artifact

    return onnx_from_artifact(patchcore[1], tmp_path_factory.mktemp("onnx") / "model.onnx").path
