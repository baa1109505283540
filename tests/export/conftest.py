"""Session fixtures: a generated demo category, a PatchCore artifact fitted on it, its FP32 graph."""
from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="export tests need torch (training extra)")

import export_fixtures as fx  # noqa: E402  (tests/export is on sys.path under pytest's prepend mode)


@pytest.fixture(scope="session")
def demo_category(tmp_path_factory):
    return fx.write_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def patchcore(demo_category, tmp_path_factory):
    """(model, artifact dir)."""
    return fx.fit_patchcore_artifact(demo_category, tmp_path_factory.mktemp("art") / "patchcore")


@pytest.fixture(scope="session")
def fp32_graph(patchcore, tmp_path_factory):
    from protospect.export.onnx_export import onnx_from_artifact

    return onnx_from_artifact(patchcore[1], tmp_path_factory.mktemp("onnx") / "model.onnx").path
