"""Rules v12 / v13 (docs/decision.md sections 32-34): the training-free global branch and the selection that fuses
it with PCSNet's image score. The branch runs on the real Lite0 weights; the selection on generated per-image
scores in the files decision_study.py --save-scores and global_study.py write."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
import select_v13  # noqa: E402 (studies/, not a package)
from global_study import GlobalBranch  # noqa: E402
from select_v12 import fuse  # noqa: E402

PCS = "pcs|none|max"
FOUR = ("valn_nsa_small", "valn_misplace", "valn_erase", "valn_transplant")


def _part(seed: int, label_row: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((256, 256, 3), 40, np.uint8)
    img[32:224, 64:192] = (200, 170, 60)
    img[label_row:label_row + 48, 80:176] = (30, 90, 200)  # a "label" whose height is the part's composition
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def test_global_branch_scores_a_moved_label_above_a_re_shot_of_the_same_part():
    gb = GlobalBranch()
    shots = [_part(s, 96) for s in range(3)]
    bank = gb.descriptors(shots)
    assert bank.shape == (3, 112 + 320)
    assert np.allclose(bank[:, :112].norm(dim=1).numpy(), 1, atol=1e-5)  # each stage L2-normalised
    assert gb.score(bank[:1], bank)[0] == pytest.approx(0, abs=1e-3)  # a shot is its own nearest neighbour
    same = gb.score(gb.descriptors([_part(9, 96)]), bank)[0]
    moved = gb.score(gb.descriptors([_part(9, 150)]), bank)[0]
    assert moved > 2 * same  # the same pieces in another place: the composition changed
    big = gb.descriptors([np.repeat(np.repeat(_part(9, 96), 2, 0), 2, 1)])  # any input size is seen at 256 px
    assert gb.score(big, bank)[0] == pytest.approx(same, rel=0.2, abs=0.02)


def test_fusion_standardises_each_score_by_its_own_calibration_views():
    rng = np.random.default_rng(0)
    p = {"normal_calib": rng.normal(10, 2, 16), "val_normal": rng.normal(10, 2, 20)}
    g = {"normal_calib": rng.normal(0.3, 0.01, 16), "val_normal": rng.normal(0.3, 0.01, 20)}
    f = fuse(p, g)
    assert np.mean(f["normal_calib"]) == pytest.approx(0, abs=1e-9)  # both z-scores have mean 0 there
    g_units = {k: 1000 * v - 5 for k, v in g.items()}  # the same scores in other units fuse to the same thing
    assert np.allclose(fuse(p, g_units)["val_normal"], f["val_normal"])


def _npz(path: Path, prefix: str, sets: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{f"{prefix}::{k}": v for k, v in sets.items()}, **({"size": 256} if prefix == "g" else {}))


def _write_cell(root: Path, cat: str, s: int, rng, p_warp: float, g_warp: float, rerun_differs=False):
    """runs/v11 (256 and 512 px), v13 (the 256 px model again, with warp), v12 and v13g (g) for one cell."""
    base = {"normal_calib": rng.normal(0, 1, 16), "val_normal": rng.normal(0, 1, 20),
            **{k: rng.normal(3, 1, 20) for k in FOUR}}
    for size in (256, 512):  # 512 px no better: rule v11 keeps 256
        _npz(root / "runs/v11" / f"{cat}_k4_s{s}_{size}.jsonl.k4s{s}.npz", PCS, base)
    rerun = {**base, "valn_warp": rng.normal(p_warp, 1, 20)}
    if rerun_differs:
        rerun["valn_erase"] = rerun["valn_erase"] + 1e-6
    _npz(root / "runs/v13" / f"{cat}_k4_s{s}_256.jsonl.k4s{s}.npz", PCS, rerun)
    g = {"normal_calib": rng.normal(0, 1, 16), "val_normal": rng.normal(0, 1, 20), **{k: rng.normal(0.2, 1, 20) for k in FOUR}}
    _npz(root / "runs/v12" / f"{cat}_k4_s{s}.npz", "g", g)
    _npz(root / "runs/v13g" / f"{cat}_k4_s{s}.npz", "g", {**g, "valn_warp": rng.normal(g_warp, 1, 20)})


def test_warp_picks_the_fusion_only_where_it_is_seen_and_a_differing_rerun_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(select_v13, "qualifies", lambda *a: False)
    rng = np.random.default_rng(3)
    _write_cell(tmp_path, "juice", 0, rng, p_warp=0.0, g_warp=4.0)  # p blind to warp, g sees it
    _write_cell(tmp_path, "bottle", 0, rng, p_warp=4.0, g_warp=0.0)  # p sees it already: fusing only adds noise
    _write_cell(tmp_path, "pcb", 0, rng, p_warp=0.0, g_warp=4.0, rerun_differs=True)
    juice, bottle = select_v13.cell(tmp_path, "", "juice", 0), select_v13.cell(tmp_path, "", "bottle", 0)
    assert juice["warp"]["p"] < 70 < juice["warp"]["pg"] and juice["pick"] == "pg"
    assert bottle["pick"] == "p"
    assert "valn_erase" in select_v13.cell(tmp_path, "", "pcb", 0)["error"]  # not the same model: refused
