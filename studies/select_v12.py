"""Rule v12 (docs/decision.md section 32): PCSNet's image score `p` fused with the global branch `g` (global_study.py).

Per cell: rule v11's size and its model's saved scores (`p`); `g` from ``<v12>/<category>_k<K>_s<seed>.npz``; `p+g`
= the sum of both scores standardised by their own normal statistics (the calibration views). auto-g takes `p+g`
when its four-kind validation score (rule v11's) beats `p`'s by more than MARGIN. Adopted when, over the 21 K = 4
cells, auto-g's mean validation score is at least GAIN above rule v11's. Only validation arrays decide; --report adds
the test split where the saved files hold it.

    cd studies && python select_v12.py ../runs/v12 [--k 4] [--report] [--markdown F]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from select_640 import SIZES, load_scores, qualifies
from select_fusion import CATEGORIES, GAIN, MARGIN, PCS, emit, mean, npz_path, test_row, verdict_line
from select_v11 import RULE_KINDS, rule_pick, scores

KINDS = RULE_KINDS["v11"]


def standardise(sets: dict) -> dict:
    """Each set's scores as z-scores against the normal statistics (the calibration views' scores)."""
    mu, sd = float(np.mean(sets["normal_calib"])), float(np.std(sets["normal_calib"]))
    sd = sd if sd > 1e-12 else 1.0
    return {k: (v - mu) / sd for k, v in sets.items()}


def fuse(p: dict, g: dict) -> dict:
    zp, zg = standardise(p), standardise(g)
    return {k: zp[k] + zg[k] for k in zp if k in zg}


def cell(v11: Path, v12: Path, data: str, c: str, k: int, s: int) -> dict | None:
    """{"p", "g", "pg": {set: scores}, "nn", "labels", "v": validation scores, "pick"} of one cell, or None."""
    gpath = v12 / f"{c}_k{k}_s{s}.npz"
    sc = load_scores(v11, c, k, s)
    if sc is None or not gpath.exists():
        return None
    key = rule_pick(sc, qualifies(data, c, k, s), "v11")
    p = dict(sc[key])  # load_scores leaves the calibration views out; the standardisation needs them
    p["normal_calib"] = np.load(npz_path(v11, c, k, s, SIZES[key]))[f"{PCS}::normal_calib"]
    z = np.load(gpath)
    g = {n.split("::")[1]: z[n] for n in z.files if n.startswith("g::")}
    d = {"p": p, "g": g, "pg": fuse(p, g), "nn": sc.get("nn"), "labels": sc.get("labels"), "size": int(z["size"])}
    d["v"] = {key: scores(d[key], KINDS) for key in ("p", "g", "pg")}
    d["pick"] = "pg" if d["v"]["pg"] > d["v"]["p"] + MARGIN else "p"
    return d


def test_table(cells: dict, columns: dict[str, str]) -> list[str]:
    """The test split, read after the choice: per category, the mean over the seeds whose test scores were saved of
    image AUROC / escape @ A = 5 % / false reject @ A = 5 % for each column (a score set of the cell; "auto" is the
    cell's choice, "nn" PatchCore edge)."""
    lines = ["", "Test split (read after the choice), mean over the seeds with saved test scores: image AUROC / "
             "escape @ A = 5 % / false reject @ A = 5 %", "",
             "| category | seeds | " + " | ".join(columns.values()) + " |", "|---|---|" + "---|" * len(columns)]
    for c in CATEGORIES:
        rows = {n: [] for n in columns}
        for s in (0, 1, 2):
            d = cells.get((c, s))
            if d is None or d["labels"] is None or any("test" not in d[n] for n in ("p", "g", "pg")):
                continue
            for n in columns:
                sets = d[d["pick"]] if n == "auto" else d[n]
                if sets and "test" in sets:
                    rows[n].append(test_row(sets, d["labels"]))
        if rows["p"]:
            def t(rs):
                return " / ".join(f"{mean([r[m] for r in rs]):.1f}" for m in ("auroc", "escape", "frr")) if rs else "-"
            lines.append(f"| {c} | {len(rows['p'])} | " + " | ".join(t(rows[n]) for n in columns) + " |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="global_study.py's output (runs/v12)")
    ap.add_argument("--runs", default="..", help="the folder holding runs/v11 (K = 4) and runs/v11k (K = 2 / 8)")
    ap.add_argument("--data", default="../../shared/data")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--report", action="store_true", help="after the choice: the test split")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    v11 = Path(args.runs) / "runs" / ("v11" if args.k == 4 else "v11k")
    lines = [f"Rule v12 (section 32), K = {args.k}. Four-kind validation score (rule v11's) of p (rule v11's model), "
             "g (global branch) and p+g, and auto-g's choice.", "",
             "| category | seed | size | p | g | p+g | auto-g |", "|---|---|---|---|---|---|---|"]
    cells, missing = {}, []
    for c in CATEGORIES:
        for s in (0, 1, 2):
            d = cell(v11, Path(args.folder), args.data, c, args.k, s)
            if d is None:
                missing.append(f"{c} seed {s}")
                continue
            cells[(c, s)] = d
            v = d["v"]
            lines.append(f"| {c} | {s} | {d['size']} | {v['p']:.1f} | {v['g']:.1f} | {v['pg']:.1f} | "
                         f"{'p+g' if d['pick'] == 'pg' else 'p'} |")
    gain = mean([d["v"][d["pick"]] - d["v"]["p"] for d in cells.values()])
    complete = len(cells) == 3 * len(CATEGORIES)
    adopted = complete and gain >= GAIN
    lines += ["", f"{len(cells)} cells" + (f"; missing: {', '.join(missing)}" if missing else "") + ".",
              f"auto-g - rule v11, mean validation score: {gain:+.3f} (needs >= {GAIN}); "
              f"p+g chosen in {sum(d['pick'] == 'pg' for d in cells.values())} cells",
              verdict_line("v12", adopted, complete, args.k)]
    if args.report:
        lines += test_table(cells, {"p": "p (rule v11)", "g": "g", "pg": "p+g", "auto": "auto-g", "nn": "PatchCore edge"})
    emit(lines, args.markdown)


if __name__ == "__main__":
    main()
