"""studies/acceptance_reruns.py reads the committed result files it builds on: rule v6's per-category rows (the first
table of docs/results/auto_v6.md, not rule v4's second one) and rule v10's reported test rows."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "studies"))
import acceptance_reruns  # noqa: E402 (studies/, not a package)
from acceptance_reruns import base_rows, main, reported_rows  # noqa: E402
from select_fusion import KINDS  # noqa: E402
from select_v11 import NEW  # noqa: E402


def test_base_rows_are_rule_v6s_table():
    rows = base_rows(ROOT / "docs/results/auto_v6.md")
    assert len(rows) == 21  # 7 categories x K = 2, 4, 8
    assert rows[("mpdd_metal_plate", 8)]["line_new"] == 53.5  # rule v6's; rule v4's table below reads 50.2
    assert rows[("juice_bottle_loco", 4)]["img_new"] == 82.1 and rows[("juice_bottle_loco", 4)]["img_nn"] == 86.1
    assert rows[("elpv_mono", 2)]["pix_old"] is None  # no masks: no pixel metrics


def test_reported_rows_take_auto640_where_it_differs_from_rule_v6():
    rows = reported_rows(ROOT / "docs/results/size640_v10.md", 4)
    assert set(rows) == {("deeppcb_00041", 4), ("deeppcb_44000", 4)}
    assert rows[("deeppcb_44000", 4)] == (97.8, 13.7)


def test_the_table_without_reruns_reproduces_rule_v6(capsys):
    main(["--base", str(ROOT / "docs/results/auto_v6.md")])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| all |"))
    assert "87.92 / 92.36 / 82.50 (+4.44)" in line  # section 19's 63-cell means, from rounded category rows
    assert "- juice_bottle_loco: -2.90" in out


def _job(folder: Path, seed: int, size: int, shift: dict, rng, with_test: bool,
         cat: str = "juice_bottle_loco") -> None:
    """One juice_bottle_loco K = 4 job's saved scores: normals ~ N(0, 1), each planted kind ~ N(shift, 1); a light
    job (validation only) has no test split."""
    arrays = {}
    for variant in ("pcs|none|max", "nn1|none|max"):
        raw = {"val_normal": rng.normal(0, 1, 200), **{k: rng.normal(v, 1, 200) for k, v in shift.items()}}
        if with_test:
            raw["test"] = np.r_[rng.normal(0, 1, 30), rng.normal(3 if size == 256 else 1, 1, 30)]
        arrays.update({f"{variant}::{k}": v for k, v in raw.items()})
    if with_test:
        arrays["test_labels"] = np.r_[np.zeros(30), np.ones(30)].astype(np.int8)
    np.savez(folder / f"{cat}_k4_s{seed}_{size}.jsonl.k4s{seed}.npz", **arrays)


@pytest.mark.parametrize("with_test", [False, True])
def test_a_cell_rule_v11_moves_is_never_left_with_rule_v10s_row(tmp_path, monkeypatch, capsys, with_test):
    monkeypatch.setattr(acceptance_reruns, "qualifies", lambda *a: False)
    rng = np.random.default_rng(0)
    for s in (0, 1, 2):  # the three old kinds favour 512 px a little, transplant favours 256 px strongly
        _job(tmp_path, s, 256, {**dict.fromkeys(KINDS, 1.5), NEW: 2.5}, rng, with_test)
        _job(tmp_path, s, 512, {**dict.fromkeys(KINDS, 1.7), NEW: 0.5}, rng, with_test)
    argv = ["--rule", "v11", str(tmp_path), "--base", str(ROOT / "docs/results/auto_v6.md")]
    if with_test:
        main(argv)
    else:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 1
    row = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| juice_bottle_loco | 4 |"))
    if with_test:  # the test split of the 256 px jobs: every cell at 256 px, well separated
        assert row.endswith(f"| rule v11, rerun in {tmp_path.name}/, sizes 256/256/256 |")
    else:
        assert "STALE: rule v11 moves seed 0 512 -> 256 px, seed 1 512 -> 256 px, seed 2 512 -> 256 px" in row
        assert "82.1" in row  # rule v6's row is still shown, marked


def test_a_move_back_to_rule_v6s_sizes_takes_rule_v6s_row(tmp_path, monkeypatch, capsys):
    """deeppcb_00041 K = 4: rule v10 picks 640 px, v11 picks 512 px as rule v6 did (auto_v6.md: 512/512/512), so
    rule v6's row is v11's, without a test split (training is bit-exact: the same models)."""
    monkeypatch.setattr(acceptance_reruns, "qualifies", lambda *a: True)
    rng = np.random.default_rng(1)
    for s in (0, 1, 2):
        _job(tmp_path, s, 256, {**dict.fromkeys(KINDS, 0.5), NEW: 0.5}, rng, False, "deeppcb_00041")
        _job(tmp_path, s, 512, {**dict.fromkeys(KINDS, 1.5), NEW: 3.0}, rng, False, "deeppcb_00041")
        _job(tmp_path, s, 640, {**dict.fromkeys(KINDS, 1.8), NEW: 0.5}, rng, False, "deeppcb_00041")
    main(["--rule", "v11", str(tmp_path), "--base", str(ROOT / "docs/results/auto_v6.md"),
          "--reported", f"4={ROOT / 'docs/results/size640_v10.md'}"])
    row = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| deeppcb_00041 | 4 |"))
    assert "| 62.9 / 83.0 / 50.7 |" in row  # rule v6's 512 px row, not rule v10's reported 85.0
    assert "back to rule v6's sizes 512/512/512" in row


def test_old_for_is_arithmetic_on_the_rows(capsys):
    """--old-for puts the old 256 px model's columns in the new ones for the named categories, and says so."""
    main(["--base", str(ROOT / "docs/results/auto_v6.md"), "--old-for", "juice_bottle_loco"])
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if x.startswith("| juice_bottle_loco | 4 |"))
    assert row.startswith("| juice_bottle_loco | 4 | 87.7 / 87.7 / 86.1 |") and "arithmetic, not a rule" in row
    assert "- juice_bottle_loco: +2.60" in out  # the old model's gap to PatchCore over its 9 cells
    assert "- mpdd_metal_plate: +1.00" in out  # other categories untouched
