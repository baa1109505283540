"""Rule v8's selection (studies/select_fusion.py, docs/decision.md section 20) on generated per-image scores in
the files decision_study.py --save-scores writes: each model standardised by its own shots' statistics, the
fused candidate chosen only when it beats rule v6's choice by the margin, and the test split read only for the
report."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
from select_fusion import KINDS, MARGIN, auroc, choose, load_cell, main  # noqa: E402 (studies/, not a package)

PCS, NN = "pcs|none|max", "nn1|none|max"


def write_cell(folder: Path, cat: str, seed: int, size: int, shift: dict[str, float], scale: float, offset: float,
               rng: np.random.Generator) -> None:
    """Scores of one model: normals ~ N(0, 1), each planted kind ~ N(shift, 1), then scale * x + offset (a model's
    own units); the shots' calibration scores come from the normals' distribution."""
    arrays = {}
    for variant in (PCS, NN):
        raw = {"normal_calib": rng.normal(0, 1, 16), "val_normal": rng.normal(0, 1, 20),
               "line_good": rng.normal(0, 1, 40), "test": np.r_[rng.normal(0, 1, 30), rng.normal(2, 1, 30)]}
        raw.update({k: rng.normal(shift[k], 1, 20) for k in KINDS})
        arrays.update({f"{variant}::{k}": scale * v + offset for k, v in raw.items()})
    arrays["test_labels"] = np.r_[np.zeros(30), np.ones(30)].astype(np.int8)
    np.savez_compressed(folder / f"{cat}_k4_s{seed}_{size}.jsonl.k4s{seed}.npz", **arrays)


def test_choose_keeps_the_cheaper_model_within_the_margin():
    assert choose({"s": 90.0, "l": 90.0 + MARGIN, "f": 90.0 + 2 * MARGIN}) == ("s", "f")
    assert choose({"s": 90.0, "l": 92.0, "f": 92.0 + MARGIN}) == ("l", "l")
    assert choose({"s": 80.0, "l": 92.0, "f": 93.0}) == ("l", "f")
    assert choose({"s": 95.0, "l": 90.0, "f": 95.4}) == ("s", "s")


def test_standardised_fusion_is_independent_of_each_models_units(tmp_path):
    write_cell(tmp_path, "bottle", 0, 256, dict.fromkeys(KINDS, 1.0), 1.0, 0.0, np.random.default_rng(1))
    write_cell(tmp_path, "bottle", 0, 512, dict.fromkeys(KINDS, 1.0), 1000.0, 50.0, np.random.default_rng(2))
    cell = load_cell(tmp_path, "bottle", 4, 0)
    z = np.load(tmp_path / "bottle_k4_s0_512.jsonl.k4s0.npz")
    calib = z[f"{PCS}::normal_calib"]
    expect = (z[f"{PCS}::test"] - calib.mean()) / calib.std()
    np.testing.assert_allclose(cell["l"]["test"], expect)
    # the 1000x model does not swamp the other: both contribute on the same scale (up to the noise of 16 shots'
    # statistics), where the raw scores differ by a factor of 1000
    ratio = np.std(cell["l"]["val_normal"]) / np.std(cell["s"]["val_normal"])
    assert 1 / 3 < ratio < 3
    np.testing.assert_allclose(cell["f"]["test"], (cell["s"]["test"] + cell["l"]["test"]) / 2)
    assert cell["labels"].sum() == 30


def test_selection_and_report_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(3)
    for c in ("bottle", "deeppcb_00041"):
        for s in (0, 1, 2):
            write_cell(tmp_path, c, s, 256, dict.fromkeys(KINDS, 1.5), 1.0, 0.0, rng)
            write_cell(tmp_path, c, s, 512, dict.fromkeys(KINDS, 1.5), 3.0, 1.0, rng)
    main([str(tmp_path), "--report", "--markdown", str(tmp_path / "r.md")])
    text = (tmp_path / "r.md").read_text()
    assert "6 of 21 cells" in text and "NOT ADOPTED" in text  # not all 21 cells: never adopted
    assert "| bottle |" in text and "PatchCore edge" in text and "mean of 2" in text
    assert text == capsys.readouterr().out


def test_a_missing_size_leaves_the_cell_out(tmp_path):
    write_cell(tmp_path, "bottle", 0, 256, dict.fromkeys(KINDS, 1.0), 1.0, 0.0, np.random.default_rng(4))
    assert load_cell(tmp_path, "bottle", 4, 0) is None


def test_fused_score_beats_both_when_they_err_independently():
    """Two models whose errors are independent: the standardised mean separates better than either (why the
    candidate exists; what validation then has to confirm per part)."""
    rng = np.random.default_rng(5)
    n = 400
    sig = np.r_[np.zeros(n), np.ones(n)]
    a, b = sig + rng.normal(0, 1, 2 * n), sig + rng.normal(0, 1, 2 * n)
    fa, fb, ff = auroc(a[:n], a[n:]), auroc(b[:n], b[n:]), auroc(((a + b) / 2)[:n], ((a + b) / 2)[n:])
    assert ff > max(fa, fb) + 3
