"""studies/merge_runs.py: a light rerun's new arrays join an earlier run of the same job; a differing shared array
(another model) is refused and leaves the target as it was."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "studies"))
from merge_runs import main  # noqa: E402 (studies/, not a package)

JOB = "deeppcb_00041_k8_s0_640.jsonl"


def _job(folder: Path, arrays: dict, metrics: dict) -> None:
    folder.mkdir()
    np.savez(folder / f"{JOB}.k8s0.npz", **arrays)
    row = {"category": "deeppcb_00041", "K": 8, "seed": 0, "input_size": 640, "variants": {"pcs|none|max": metrics}}
    (folder / JOB).write_text(json.dumps(row) + "\n")


def test_union_of_a_lean_run_and_a_light_rerun(tmp_path, capsys):
    normal, test = np.arange(5.0), np.arange(9.0)
    _job(tmp_path / "lean", {"pcs::val_normal": normal, "pcs::test": test},
         {"valn_erase": 90.0, "test_pixel_auroc": 95.5})
    _job(tmp_path / "light", {"pcs::val_normal": normal, "pcs::valn_transplant": normal + 1},
         {"valn_erase": 90.0, "valn_transplant": 70.0})
    main([str(tmp_path / "lean"), str(tmp_path / "light")])
    z = np.load(tmp_path / "light" / f"{JOB}.k8s0.npz")
    assert sorted(z.files) == ["pcs::test", "pcs::val_normal", "pcs::valn_transplant"]
    assert np.array_equal(z["pcs::test"], test) and np.array_equal(z["pcs::valn_transplant"], normal + 1)
    row = json.loads((tmp_path / "light" / JOB).read_text())
    assert row["variants"]["pcs|none|max"] == {"valn_erase": 90.0, "valn_transplant": 70.0, "test_pixel_auroc": 95.5}
    assert "1 arrays equal, 1 added" in capsys.readouterr().out


def test_a_different_model_is_refused(tmp_path):
    _job(tmp_path / "lean", {"pcs::val_normal": np.arange(5.0), "pcs::test": np.arange(9.0)}, {})
    _job(tmp_path / "light", {"pcs::val_normal": np.arange(5.0) + 1e-6}, {})
    before = (tmp_path / "light" / f"{JOB}.k8s0.npz").read_bytes()
    with pytest.raises(ValueError, match="val_normal differs"):
        main([str(tmp_path / "lean"), str(tmp_path / "light")])
    assert (tmp_path / "light" / f"{JOB}.k8s0.npz").read_bytes() == before
