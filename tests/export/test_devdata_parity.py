"""Parity on a real dev category (bottle, K=2, PatchCore edge preset at 256): the issue's acceptance check.

PyTorch vs ONNX Runtime CPU over the whole test split, through the shared resize: maps within
1e-4 of their range, identical OK/NG decisions, image AUROC identical to 3 decimals.
"""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.devdata, pytest.mark.slow, pytest.mark.torch]


def test_bottle_parity(dev_data, tmp_path):
    from protospect.export.parity import parity_on_category

    if not (dev_data / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"dev category bottle not found under {dev_data}")
    report, _ = parity_on_category(dev_data, "bottle", "patchcore", tmp_path)
    print(report.format())
    assert report.map_max_rel <= 1e-4
    assert report.decisions_differ == 0
    assert round(report.auroc_torch, 3) == round(report.auroc_onnx, 3)
