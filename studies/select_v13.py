"""Rule v13 (docs/decision.md section 34): the planted kind `warp` decides, per part, between PCSNet's image score
`p` and its fusion `p+g` with the global branch (section 32).

Reads, per cell: rule v11's chosen size and the model's saved scores (runs/v11 at K = 4, runs/v11k at K = 2 / 8), the
same model's `warp` scores (runs/v13 / runs/v13k, retrained bit-exact), `g`'s scores (runs/v12) and `g` on `warp`
(runs/v13g). The sets both runs
hold must be equal, else the cell is refused and the script exits 1. auto-w takes `p+g` when its five-kind score
beats `p`'s by more than MARGIN. Adopted when (1) auto-w's mean five-kind score is >= GAIN above `p`'s and (2) its
mean four-kind score is not below `p`'s by more than MARGIN. --report adds the test split where it was saved.

    cd studies && python select_v13.py [--runs ..] [--k 4] [--report] [--markdown F]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from select_640 import SIZES, load_scores, qualifies
from select_fusion import CATEGORIES, GAIN, MARGIN, PCS, auroc, emit, mean, npz_path, sets_of, verdict_line
from select_v11 import RULE_KINDS, rule_pick, scores
from select_v12 import fuse, test_table

NEW = "valn_warp"
FOUR = RULE_KINDS["v11"]
FIVE = (*FOUR, NEW)
SHARED = ("val_normal", *FOUR, "normal_calib")  # what the reruns must reproduce


def _g(path: Path) -> dict:
    z = np.load(path)
    return {n.split("::")[1]: z[n] for n in z.files if n.startswith("g::")}


def _p(path: Path) -> dict:
    z = np.load(path)
    out = sets_of(z)
    out["normal_calib"] = z[f"{PCS}::normal_calib"]
    return out


def differs(a: dict, b: dict) -> list[str]:
    return [k for k in SHARED if k not in a or k not in b or not np.array_equal(a[k], b[k])]


def cell(runs: Path, data: str, c: str, s: int, k: int = 4) -> dict:
    """The cell's p, g, p+g (with warp), validation scores and choice; {"error": ...} when the runs disagree."""
    base = runs / "runs" / ("v11" if k == 4 else "v11k")
    sc = load_scores(base, c, k, s)
    if sc is None:
        return {"error": "no rule v11 scores"}
    size = SIZES[rule_pick(sc, qualifies(data, c, k, s), "v11")]
    paths = {"p13": npz_path(runs / "runs" / ("v13" if k == 4 else "v13k"), c, k, s, size), "g": runs / "runs" / "v12" / f"{c}_k{k}_s{s}.npz",
             "g13": runs / "runs" / "v13g" / f"{c}_k{k}_s{s}.npz"}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        return {"error": "missing " + ", ".join(missing)}
    p, p13, g, g13 = _p(npz_path(base, c, k, s, size)), _p(paths["p13"]), _g(paths["g"]), _g(paths["g13"])
    bad = differs(p, p13) + differs(g, g13)
    if bad or NEW not in p13 or NEW not in g13:
        return {"error": f"reruns differ in {bad or 'warp missing'}"}
    p[NEW], g[NEW] = p13[NEW], g13[NEW]
    d = {"p": p, "g": g, "pg": fuse(p, g), "nn": sc.get("nn"), "labels": sc.get("labels"), "size": size}
    d["v5"] = {key: scores(d[key], FIVE) for key in ("p", "g", "pg")}
    d["v4"] = {key: scores(d[key], FOUR) for key in ("p", "pg")}
    d["warp"] = {key: auroc(d[key]["val_normal"], d[key][NEW]) for key in ("p", "g", "pg")}
    d["pick"] = "pg" if d["v5"]["pg"] > d["v5"]["p"] + MARGIN else "p"
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="..", help="the folder holding runs/v11, v12, v13, v13g")
    ap.add_argument("--data", default="../../shared/data")
    ap.add_argument("--k", type=int, default=4, help="the gates decide at K = 4; K = 2 / 8 are reported")
    ap.add_argument("--report", action="store_true", help="after the choice: the test split")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    lines = [f"Rule v13 (section 34), K = {args.k}. warp AUROC, five-kind and four-kind validation scores of p (rule v11's "
             "model) and p+g, and auto-w's choice.", "",
             "| category | seed | size | warp: p / g / p+g | 5 kinds: p / p+g | 4 kinds: p / p+g | auto-w |",
             "|---|---|---|---|---|---|---|"]
    cells, errors = {}, []
    for c in CATEGORIES:
        for s in (0, 1, 2):
            d = cell(Path(args.runs), args.data, c, s, args.k)
            if "error" in d:
                errors.append(f"{c} seed {s}: {d['error']}")
                continue
            cells[(c, s)] = d
            w, v5, v4 = d["warp"], d["v5"], d["v4"]
            lines.append(f"| {c} | {s} | {d['size']} | {w['p']:.1f} / {w['g']:.1f} / {w['pg']:.1f} | "
                         f"{v5['p']:.1f} / {v5['pg']:.1f} | {v4['p']:.1f} / {v4['pg']:.1f} | "
                         f"{'p+g' if d['pick'] == 'pg' else 'p'} |")
    gain5 = mean([d["v5"][d["pick"]] - d["v5"]["p"] for d in cells.values()])
    cost4 = mean([d["v4"][d["pick"]] - d["v4"]["p"] for d in cells.values()])
    complete = len(cells) == 3 * len(CATEGORIES)
    adopted = complete and gain5 >= GAIN and cost4 >= -MARGIN
    lines += ["", f"{len(cells)} cells" + (f"; refused: {'; '.join(errors)}" if errors else "") + ".",
              f"warp AUROC, mean: p {mean([d['warp']['p'] for d in cells.values()]):.2f}, "
              f"g {mean([d['warp']['g'] for d in cells.values()]):.2f}, "
              f"p+g {mean([d['warp']['pg'] for d in cells.values()]):.2f}",
              f"1. auto-w - p, five-kind score: {gain5:+.3f} (needs >= {GAIN})",
              f"2. auto-w - p, four-kind score: {cost4:+.3f} (needs >= -{MARGIN})",
              f"p+g chosen in {sum(d['pick'] == 'pg' for d in cells.values())} cells",
              verdict_line("v13", adopted, complete, args.k)]
    if args.report:
        lines += test_table(cells, {"p": "p (rule v11)", "pg": "p+g", "auto": "auto-w", "nn": "PatchCore edge"})
    emit(lines, args.markdown)
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
