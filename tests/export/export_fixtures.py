"""Small real models and data for the export and calibration tests (shared by both conftests).

A PatchCore artifact (ImageNet efficientnet_lite0, input 64) fitted on 2 generated flange images
(protospect demo data), its generated test set, and the FP32 graph exported from it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protospect.imageio import read_rgb, resize_image

SIZE = 64
SHOTS = 2


def write_demo(root: Path) -> Path:
    from protospect.synthetic_parts import write_mvtec_layout

    return write_mvtec_layout(root, seed=0, n_train=4, n_test_good=3, n_per_defect=1, size=SIZE)


def fit_patchcore_artifact(category: Path, out: Path):
    """(model, artifact dir) for patchcore on the first SHOTS train images of ``category``."""
    from protospect.training.artifact import save_artifact
    from protospect.training.methods import get_method

    torch.set_num_threads(2)
    shots = sorted((category / "train" / "good").glob("*.png"))[:SHOTS]
    model = get_method("patchcore").fit([read_rgb(p) for p in shots], preset="edge", seed=0,
                                        config_overrides={"input_size": SIZE})
    save_artifact(model, out, shots=shots, seed=0, data={"root": str(category.parent), "category": category.name})
    return model, out


def test_set(category: Path) -> tuple[list[np.ndarray], list[int]]:
    """uint8 SIZE x SIZE frames of the generated test split and their labels (1 = defect)."""
    items = sorted((category / "test").glob("*/*.png"))
    frames = [resize_image(read_rgb(p), SIZE) for p in items]
    return frames, [0 if p.parent.name == "good" else 1 for p in items]


def held_out_normals(category: Path) -> list[np.ndarray]:
    """Train images that are not shots: normal, and not in the bank."""
    items = sorted((category / "train" / "good").glob("*.png"))[SHOTS:]
    return [resize_image(read_rgb(p), SIZE) for p in items]


# Session fixtures shared by tests/export and tests/calibration (each conftest imports them).
@pytest.fixture(scope="session")
def demo_category(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def patchcore(demo_category, tmp_path_factory):
    """(model, artifact dir)."""
    return fit_patchcore_artifact(demo_category, tmp_path_factory.mktemp("art") / "patchcore")


@pytest.fixture(scope="session")
def fp32_graph(patchcore, tmp_path_factory):
    from protospect.export.onnx_export import onnx_from_artifact

    return onnx_from_artifact(patchcore[1], tmp_path_factory.mktemp("onnx") / "model.onnx").path
