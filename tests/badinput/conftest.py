"""Session fixtures for the bad-input suite: ONE tiny part, artifact and exported graph shared by every case."""
from __future__ import annotations

from pathlib import Path

import pytest

from kit import STATION_CLI, TORCH_CLI, Kit, make_category, part, run, write_png


@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> Kit:
    for cli in (TORCH_CLI, STATION_CLI):
        if not cli.exists():
            pytest.skip(f"{cli} not found: run scripts/setup_env.sh (bash test.sh does)")
    root = tmp_path_factory.mktemp("badinput-kit")
    data = make_category(root / "data", "part", n_train=4, n_good=2, n_defect=2)
    art, model = root / "art", root / "model.onnx"
    for args in (("train", "--data", data, "--method", "patchcore", "--shots", "2", "--size", "64", "--out", art),
                 ("export", art, "--out", model)):
        res = run(TORCH_CLI, *args, timeout=600)
        assert res.code == 0, res.err
    frames = root / "frames"
    import numpy as np

    rng = np.random.default_rng(11)
    for i in range(6):
        write_png(frames / f"{i:03d}.png", part(rng)[0])
    return Kit(root, data, art, model, frames)


@pytest.fixture
def work(tmp_path) -> Path:
    return tmp_path
