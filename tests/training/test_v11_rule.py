"""Rule v11's selection (studies/select_v11.py, docs/decision.md section 28) on generated per-image scores: the
four-kind score moves a cell to the cheaper size only when the transplant kind says so strongly enough, and the
three gates (signal, cost on the old kinds, a changed choice) read validation arrays only."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
import select_v11  # noqa: E402 (studies/, not a package)
from select_fusion import KINDS, MARGIN  # noqa: E402

PCS, NN = "pcs|none|max", "nn1|none|max"


def write(folder: Path, cat: str, seed: int, size: int, shift: dict[str, float], rng: np.random.Generator) -> None:
    """One job's saved scores: normals ~ N(0, 1), each planted kind ~ N(shift, 1), a test split of 30 + 30."""
    arrays = {}
    for variant in (PCS, NN):
        raw = {"val_normal": rng.normal(0, 1, 200), "line_good": rng.normal(0, 1, 40),
               "test": np.r_[rng.normal(0, 1, 30), rng.normal(2, 1, 30)]}
        raw.update({k: rng.normal(v, 1, 200) for k, v in shift.items()})
        arrays.update({f"{variant}::{k}": v for k, v in raw.items()})
    arrays["test_labels"] = np.r_[np.zeros(30), np.ones(30)].astype(np.int8)
    np.savez_compressed(folder / f"{cat}_k4_s{seed}_{size}.jsonl.k4s{seed}.npz", **arrays)


def test_pick_is_rule_v10s_procedure():
    assert select_v11.pick({"s": 90.0, "l": 90.0 + MARGIN}, ok=False) == "s"  # within the margin: the cheap size
    assert select_v11.pick({"s": 90.0, "l": 91.0, "x": 91.4}, ok=True) == "l"
    assert select_v11.pick({"s": 90.0, "l": 91.0, "x": 92.0}, ok=True) == "x"
    assert select_v11.pick({"s": 90.0, "l": 91.0, "x": 99.0}, ok=False) == "l"  # 640 px only where the shots allow


def test_transplant_moves_a_cell_only_when_it_outweighs_the_old_kinds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(select_v11, "qualifies", lambda *a: False)  # no 640 px candidate without the real shots
    rng = np.random.default_rng(0)
    old_small, old_large = dict.fromkeys(KINDS, 1.5), dict.fromkeys(KINDS, 1.7)  # 512 px a little better
    for s in (0, 1, 2):
        # bottle: transplant agrees with the old kinds; juice: it favours 256 px strongly (logical anomalies)
        write(tmp_path, "bottle", s, 256, {**old_small, select_v11.NEW: 1.0}, rng)
        write(tmp_path, "bottle", s, 512, {**old_large, select_v11.NEW: 1.2}, rng)
        write(tmp_path, "juice_bottle_loco", s, 256, {**old_small, select_v11.NEW: 2.5}, rng)
        write(tmp_path, "juice_bottle_loco", s, 512, {**old_large, select_v11.NEW: 0.5}, rng)
    select_v11.main([str(tmp_path), "--report", "--markdown", str(tmp_path / "r.md")])
    text = (tmp_path / "r.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| bottle | ") or line.startswith("| juice")]
    assert all(r.endswith("| 512 | 512 |") for r in rows[:3])  # bottle: both rules keep 512 px
    assert all(r.endswith("| 512 | 256 |") for r in rows[3:6])  # juice: v11 moves to 256 px
    assert "3. choices changed: 3" in text
    assert "NOT ADOPTED (incomplete)" in text  # 6 of 21 cells: never adopted
    assert "PatchCore edge" in text and text == capsys.readouterr().out
