"""Rule v10 (docs/decision.md section 24): a 640 px candidate for parts photographed at 640 px or more.

Reads the per-image scores of studies/fusion_queue.sh (decision_study.py --save-scores) at 256, 512 and 640 px for
each K = 4 cell. Per cell: rule v6's choice between 256 and 512 px (512 when it beats 256 by more than MARGIN on
the planted-defect score), then 640 px when the part's shots are at least 640 px on the shorter side and it beats
that choice by more than MARGIN. Adopted when the mean validation score over the 21 cells rises by at least GAIN.
Only validation arrays are read for that; --report adds the test split.

    cd studies && python select_640.py ../runs/fusion [--data ../../shared/data] [--report] [--markdown F]
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np

from protospect.imageio import read_rgb
from protospect.training.data import MVTecCategory, sample_shots
from select_fusion import CATEGORIES, MARGIN, NN, emit, mean, npz_path, sets_of, test_row, val_score

GAIN = 0.25
X = 640
SIZES = {"s": 256, "l": 512, "x": X}


def load_scores(folder: Path, c: str, k: int, s: int) -> dict | None:
    """{"s" / "l" / "x": {set: scores}, "nn": PatchCore's, "labels": ...}; "x" only where its run exists; None without
    256 and 512."""
    out = {}
    for key, size in SIZES.items():
        p = npz_path(folder, c, k, s, size)
        if not p.exists():
            if key != "x":
                return None
            continue
        z = np.load(p)
        out[key] = sets_of(z)
        if key == "s":
            out["nn"] = sets_of(z, NN)  # PatchCore edge rows beside the 256 px model
        if "test_labels" in z:
            out["labels"] = z["test_labels"].astype(int)
    return out


@functools.cache
def _category(data: str, c: str) -> MVTecCategory:
    return MVTecCategory(data, c)  # opened once: it reads the folders (and warns about elpv's missing masks)


def qualifies(data: str, c: str, k: int, s: int) -> bool:
    """The part's K shots are at least X px on the shorter side (640 px never upscales them)."""
    shots = sample_shots(_category(data, c).train_good, k, s)
    return min(min(read_rgb(p).shape[:2]) for p in shots) >= X


def selection_args(doc: str, argv=None) -> argparse.Namespace:
    """The command line every size-selection script shares: a study folder, the data, K, --report, --markdown."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--data", default="../../shared/data")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--report", action="store_true", help="after the choice: the test split")
    ap.add_argument("--markdown", default=None)
    return ap.parse_args(argv)


def main(argv=None):
    args = selection_args(__doc__, argv)
    folder = Path(args.folder)
    lines = ["| category | seed | shots >= 640 px | val score 256 / 512 / 640 | rule v6 | auto640 |", "|---|---|---|---|---|---|"]
    cells, gains, missing = {}, [], []
    for c in CATEGORIES:
        for s in (0, 1, 2):
            sc = load_scores(folder, c, args.k, s)
            if sc is None:
                continue
            ok = qualifies(args.data, c, args.k, s)
            if ok and "x" not in sc:
                missing.append(f"{c} seed {s}")
                continue
            v = {key: val_score(sc[key]) for key in ("s", "l", "x") if key in sc}
            v6 = "l" if v["l"] > v["s"] + MARGIN else "s"
            pick = "x" if ok and v["x"] > v[v6] + MARGIN else v6
            cells[(c, s)] = (sc, v6, pick)
            gains.append(v[pick] - v[v6])
            x_txt = f"{v['x']:.1f}" if "x" in v else "-"
            lines.append(f"| {c} | {s} | {'yes' if ok else 'no'} | {v['s']:.1f} / {v['l']:.1f} / {x_txt} | "
                         f"{SIZES[v6]} | {SIZES[pick]} |")
    gain = mean(gains)
    complete = len(cells) == 3 * len(CATEGORIES)
    adopted = complete and gain >= GAIN
    head = [f"Rule v10 (section 24), K = {args.k}: {len(cells)} of {3 * len(CATEGORIES)} cells"
            + (f"; waiting for the 640 px runs of {', '.join(missing)}" if missing else "") + ".", ""]
    lines = head + lines + ["", f"auto640 - rule v6, mean validation score over {len(cells)} cells: {gain:+.3f} "
                            f"(needs >= {GAIN} over all 21): {'ADOPTED' if adopted else 'NOT ADOPTED'}; 640 px chosen "
                            f"in {sum(p == 'x' for _, _, p in cells.values())} cells"]
    if args.report:
        lines += ["", "Test split (read after the choice): image AUROC / escape @ A = 5 % / false reject @ A = 5 %, "
                  "mean over seeds", "", "| category | 256 px | 512 px | 640 px | rule v6 | auto640 |",
                  "|---|---|---|---|---|---|"]
        per_cat = {}
        for c in CATEGORIES:
            rows = {n: [] for n in ("s", "l", "x", "v6", "a")}
            for s in (0, 1, 2):
                if (c, s) not in cells or "labels" not in cells[(c, s)][0]:
                    continue
                sc, v6, pick = cells[(c, s)]
                t = {key: test_row(sc[key], sc["labels"]) for key in ("s", "l", "x") if key in sc}
                for key in t:
                    rows[key].append(t[key])
                rows["v6"].append(t[v6])
                rows["a"].append(t[pick])
            if not rows["v6"]:
                continue
            per_cat[c] = {n: {m: mean([r[m] for r in rs]) for m in ("auroc", "escape", "frr")} for n, rs in rows.items()}
            lines.append(f"| {c} | " + " | ".join(
                "-" if np.isnan(per_cat[c][n]["auroc"]) else
                f"{per_cat[c][n]['auroc']:.1f} / {per_cat[c][n]['escape']:.1f} / {per_cat[c][n]['frr']:.1f}"
                for n in ("s", "l", "x", "v6", "a")) + " |")
        if per_cat:
            lines.append(f"| **mean of {len(per_cat)}** | - | - | - | "
                         f"{mean([per_cat[c]['v6']['auroc'] for c in per_cat]):.2f} | "
                         f"{mean([per_cat[c]['a']['auroc'] for c in per_cat]):.2f} |")
    emit(lines, args.markdown)


if __name__ == "__main__":
    main()
