"""Rule v9 (docs/decision.md section 22): PatchCore's 3x3 pooling, zero padding counted or not, from validation only.

Reads the JSON lines of studies/patchcore_detail_study.py (one per category, K = 4, seeds 0-2). The score of a
variant is the mean image AUROC of the held-out normals against the texture and nsa_small kinds. ``pad`` is
adopted when its mean over the 21 cells beats ``nopad``'s by at least GAIN and no category's mean is more than
SLACK below. Only ``val_*`` columns are read for that; --report adds the test split of all eight variants.

    cd studies && python select_pool.py ../runs/patchcore_detail_v9 [--report] [--markdown F]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from select_fusion import emit

KINDS = ("val_texture", "val_nsa_small")
PROJECT, PAD = "tflite|area|nopad", "tflite|area|pad"
GAIN, SLACK = 0.25, 1.0
CELLS = 21


def load(folder: Path) -> dict[str, list[dict]]:
    """category -> its K = 4 rows (the last row per seed counts, should a run have been repeated)."""
    out = {}
    for p in sorted(folder.glob("*.jsonl")):
        rows = {}
        for line in p.read_text().splitlines():
            r = json.loads(line)
            if r["K"] == 4:
                rows[r["seed"]] = r
        if rows:
            out[rows[min(rows)]["category"]] = [rows[s] for s in sorted(rows)]
    return out


def val(row: dict, variant: str) -> float:
    return float(np.mean([row["variants"][variant][k] for k in KINDS]))


def select(data: dict[str, list[dict]]) -> dict:
    per_cat = {c: {v: float(np.mean([val(r, v) for r in rows])) for v in (PROJECT, PAD)} for c, rows in data.items()}
    cells = [(val(r, PROJECT), val(r, PAD)) for rows in data.values() for r in rows]
    gain = float(np.mean([b - a for a, b in cells])) if cells else float("nan")
    worst = min((per_cat[c][PAD] - per_cat[c][PROJECT] for c in per_cat), default=float("nan"))
    adopted = len(cells) == CELLS and gain >= GAIN and worst >= -SLACK
    return {"per_category": per_cat, "cells": len(cells), "gain": gain, "worst": worst, "adopted": adopted}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--report", action="store_true", help="after the choice: the test split")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    data = load(Path(args.folder))
    sel = select(data)
    lines = [f"Rule v9 (section 22): {sel['cells']} of {CELLS} K = 4 cells.", "",
             "| category | seeds | validation nopad (project) / pad |", "|---|---|---|"]
    for c, v in sel["per_category"].items():
        lines.append(f"| {c} | {len(data[c])} | {v[PROJECT]:.1f} / {v[PAD]:.1f} ({v[PAD] - v[PROJECT]:+.1f}) |")
    lines += ["", f"pad - nopad: mean over cells {sel['gain']:+.3f} (needs >= {GAIN}), worst category "
              f"{sel['worst']:+.2f} (needs >= {-SLACK}): {'ADOPTED' if sel['adopted'] else 'NOT ADOPTED'}"]
    if args.report:
        variants = list(next(iter(data.values()))[0]["variants"])
        lines += ["", "Test image AUROC (read after the choice), mean over seeds; validation in brackets:", "",
                  "| variant (norm / resize / pool) | " + " | ".join(data) + " | mean |",
                  "|---|" + "---|" * (len(data) + 1)]
        for v in variants:
            t = [float(np.mean([r["variants"][v]["test_image_auroc"] for r in rows])) for rows in data.values()]
            vv = [float(np.mean([val(r, v) for r in rows])) for rows in data.values()]
            lines.append(f"| {v.replace('|', ' / ')} | " + " | ".join(f"{a:.1f} ({b:.1f})" for a, b in zip(t, vv))
                         + f" | {np.mean(t):.2f} ({np.mean(vv):.2f}) |")
    emit(lines, args.markdown)


if __name__ == "__main__":
    main()
