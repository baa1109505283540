"""Rule v9's selection (studies/select_pool.py, docs/decision.md section 22) on written study rows: the mean gain,
the per-category floor and the need for all 21 cells."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "studies"))
from select_pool import PAD, PROJECT, load, main, select  # noqa: E402 (studies/, not a package)

CATS = ("bottle", "deeppcb_00041", "deeppcb_44000", "elpv_mono", "hazelnut_toy", "juice_bottle_loco", "mpdd_metal_plate")


def write(folder: Path, pad_delta: dict[str, float], seeds=(0, 1, 2)) -> None:
    for c in CATS:
        with (folder / f"{c}.jsonl").open("w") as f:
            for s in seeds:
                base = 80.0 + s
                v = {PROJECT: {"val_texture": base, "val_nsa_small": base + 2, "test_image_auroc": 90.0},
                     PAD: {"val_texture": base + pad_delta.get(c, 0), "val_nsa_small": base + 2 + pad_delta.get(c, 0),
                           "test_image_auroc": 91.0}}
                f.write(json.dumps({"category": c, "K": 4, "seed": s, "variants": v}) + "\n")


def test_adopted_only_with_the_gain_and_no_category_below_the_floor(tmp_path):
    write(tmp_path, dict.fromkeys(CATS, 0.5))
    assert select(load(tmp_path))["adopted"]
    write(tmp_path, {**dict.fromkeys(CATS, 2.0), "hazelnut_toy": -1.5})  # gains on mean, one category too low
    sel = select(load(tmp_path))
    assert sel["gain"] > 1 and sel["worst"] == -1.5 and not sel["adopted"]
    write(tmp_path, dict.fromkeys(CATS, 0.1))  # too small a gain
    assert not select(load(tmp_path))["adopted"]


def test_never_adopted_on_part_of_the_cells(tmp_path, capsys):
    write(tmp_path, dict.fromkeys(CATS, 3.0), seeds=(0, 1))
    sel = select(load(tmp_path))
    assert sel["cells"] == 14 and not sel["adopted"]
    main([str(tmp_path), "--report"])
    out = capsys.readouterr().out
    assert "NOT ADOPTED" in out and "| tflite / area / pad |" in out and "91.0" in out
