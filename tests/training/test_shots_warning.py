"""All-black or identical shots train, but with one warning line saying so (issue 20)."""
from __future__ import annotations

import numpy as np
import pytest
from mvtec_tiny import make_category, write

from protospect.cli import main

pytestmark = pytest.mark.torch


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "shots:" in r.getMessage()]


@pytest.mark.parametrize("kind", ["black", "identical"])
def test_degenerate_shots_warn_once(tmp_path, caplog, kind):
    cat = make_category(tmp_path / "data", "part", n_train=3, n_good=1, n_defect=1)
    good = sorted((cat / "train" / "good").iterdir())
    first = np.zeros((64, 64, 3), np.uint8) if kind == "black" else None
    for i, path in enumerate(good):
        if kind == "black":
            write(path, first)
        elif i > 0:
            path.write_bytes(good[0].read_bytes())
    rc = main(["train", "--data", str(cat), "--method", "patchcore", "--shots", "3", "--out", str(tmp_path / "art"),
               "--size", "64"])
    lines = _warnings(caplog)
    assert all('\n' not in line for line in lines)
    assert rc == 0 and len(lines) == 1, lines
    assert ("3 of 3 are (near-)constant" if kind == "black" else "2 are identical to another shot") in lines[0]


def test_ordinary_shots_do_not_warn():
    from protospect.training.cli_train import degenerate_shots

    rng = np.random.default_rng(0)
    shots = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    assert degenerate_shots(shots, ["a", "b", "c"]) is None
