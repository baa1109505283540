"""Parity on a real dev category (bottle, K=2, PatchCore edge preset at 256): the issue's acceptance check.

PyTorch vs ONNX Runtime CPU over the whole test split, through the shared resize: maps within
1e-4 of their range, identical OK/NG decisions, image AUROC identical to 3 decimals.
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.devdata, pytest.mark.slow, pytest.mark.torch]


def test_bottle_parity(dev_data, tmp_path):
    from protospect.export.onnx_export import onnx_from_model
    from protospect.export.parity import parity_from_model
    from protospect.imageio import read_rgb
    from protospect.training.data import MVTecCategory, sample_shots
    from protospect.training.methods import get_method

    if not (dev_data / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"dev category bottle not found under {dev_data}")
    cat = MVTecCategory(dev_data, "bottle")
    shots = sample_shots(cat.train_good, 2, seed=0)
    model = get_method("patchcore").fit([read_rgb(p) for p in shots], preset="edge", seed=0)
    graph = onnx_from_model(model, model.meta, model.calibration, tmp_path / "bottle.onnx").path
    report = parity_from_model(model, graph, [t.path for t in cat.test], [t.label for t in cat.test])
    print(report.format())
    assert report.map_max_rel <= 1e-4
    assert report.decisions_differ == 0
    assert round(report.auroc_torch, 3) == round(report.auroc_onnx, 3)
