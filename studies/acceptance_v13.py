"""The acceptance table under rule v13 (docs/decision.md section 34): rule v11's table with, in every seed where
auto-w chooses `p+g`, that seed's image-level columns moved from `p` to `p+g`.

The maps do not change under rule v13 (only the image score does), so pixel AUROC and AUPRO stay rule v11's. Each
row is a mean over seeds 0-2, so a seed that moves adds (value of p+g - value of p) / 3 to image AUROC, escape @ line
and escape @ A = 5 %, both read from the same saved per-image scores. Where all three seeds' per-image test scores
(and PatchCore's) were saved, the row's image columns are recomputed from them instead, unrounded. Those test scores come from the rule v11 runs
where they were saved and otherwise from lean reruns of the chosen model (--tests, checked to be the same model:
equal validation arrays), with `g` on the same test images (--g-tests, global_study.py --scores on those reruns).
A moved seed without them is listed as MISSING and the script exits 1.

    cd studies && python acceptance_v13.py [--table ../docs/results/acceptance_v11.md] [--runs ..]
        [--tests ../runs/v13t ../runs/v13k] [--g-tests ../runs/v13gt ../runs/v13g] [--markdown F]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from acceptance_reruns import base_rows, table_lines
from protospect.runtime import line_threshold
from protospect.training import metrics
from select_fusion import emit, npz_path, test_row
from select_v12 import fuse
from select_v13 import SHARED, _g, _p, cell

MOVED = ("img_new", "line_new", "a05_new")


def image_columns(sets: dict, labels: np.ndarray) -> dict:
    """image AUROC, escape @ line (the line threshold from the line images) and escape @ A = 5 %, in %."""
    row = test_row(sets, labels)
    at = metrics.threshold_stats(labels, sets["test"], line_threshold.choose(sets["line_good"]))
    return {"img_new": row["auroc"], "line_new": 100 * at["escape_rate"], "a05_new": row["escape"]}


def with_tests(d: dict, tests: list[Path], g_tests: list[Path], c: str, k: int, s: int) -> tuple | None:
    """(p, g, test labels) with test and line scores: the cell's own, else a lean rerun's (same model) and g on its images."""
    p, g = d["p"], d["g"]
    if "test" in p and "test" in g:
        return p, g, d["labels"]
    found = [f for f in tests if npz_path(f, c, k, s, d["size"]).exists()]
    gfound = [f / f"{c}_k{k}_s{s}.npz" for f in g_tests if (f / f"{c}_k{k}_s{s}.npz").exists()]
    gfound = [f for f in gfound if "g::test" in np.load(f).files]
    if not found or not gfound:
        return None
    rp, rg = npz_path(found[0], c, k, s, d["size"]), gfound[0]
    tp, tg = _p(rp), _g(rg)
    if any(not np.array_equal(p[key], tp[key]) for key in SHARED) or "test" not in tp or "test" not in tg:
        raise SystemExit(f"acceptance_v13: {rp} is not the model of rule v11's {c} K={k} seed {s}")
    return {**p, **tp}, {**g, **tg}, np.load(rp)["test_labels"].astype(int)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default="../docs/results/acceptance_v11.md")
    ap.add_argument("--runs", default="..")
    ap.add_argument("--data", default="../../shared/data")
    ap.add_argument("--tests", nargs="+", default=["../runs/v13t", "../runs/v13k"],
                    help="folders of lean reruns (with the test split) of rule v11's chosen models")
    ap.add_argument("--g-tests", nargs="+", default=["../runs/v13gt", "../runs/v13g"],
                    help="global_study.py outputs holding g on those reruns' test images")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    rows = base_rows(Path(args.table), 2, 7)  # an acceptance_reruns report: values in cells 2-6
    source = {key: "rule v11 (acceptance_v11.md)" for key in rows}
    missing, errors, checks = [], [], []
    for (c, k) in sorted(rows):
        moved, exact = [], []  # exact: every seed's chosen score on the test split (then the row is recomputed)
        for s in (0, 1, 2):
            d = cell(Path(args.runs), args.data, c, s, k)
            if "error" in d:
                errors.append(f"{c} K={k} seed {s}: {d['error']}")
                continue
            if d["pick"] != "pg":
                if "test" in d["p"] and d["labels"] is not None and d["nn"] and "test" in d["nn"]:
                    exact.append((image_columns(d["p"], d["labels"]), d["nn"], d["labels"]))
                continue
            both = with_tests(d, [Path(f) for f in args.tests], [Path(f) for f in args.g_tests], c, k, s)
            if both is None:
                missing.append(f"{c} K={k} seed {s} ({d['size']} px)")
                continue
            p, g, labels = both
            before, after = image_columns(p, labels), image_columns(fuse(p, g), labels)
            if d["nn"] and "test" in d["nn"] and d["labels"] is not None:
                exact.append((after, d["nn"], labels))
            for col in MOVED:
                if rows[(c, k)][col] is not None and after[col] is not None and before[col] is not None:
                    rows[(c, k)][col] += (after[col] - before[col]) / 3
            moved.append(f"seed {s}")
            checks.append(f"- {c} K = {k} seed {s}: image AUROC p {before['img_new']:.1f} -> p+g {after['img_new']:.1f}")
        if moved:
            source[(c, k)] = f"rule v13: p+g in {', '.join(moved)}; maps (pixel, AUPRO) rule v11's"
        if len(exact) == 3:  # the table's rows are rounded to 0.1: recompute what the saved scores allow
            for col in MOVED:
                vals = [e[0][col] for e in exact]
                rows[(c, k)][col] = None if any(v is None for v in vals) else float(np.mean(vals))
            rows[(c, k)]["img_nn"] = float(np.mean([test_row(nn, lab)["auroc"] for _, nn, lab in exact]))
            source[(c, k)] += "; image columns recomputed from all three seeds' per-image scores"
    lines = table_lines(rows, source, f"Acceptance table, new = rule v13 (rule v11's rows, image columns moved to "
                                      f"p+g where auto-w chooses it; base {Path(args.table).name}).")
    if checks:
        lines += ["", "Seeds that moved", "", *checks]
    if missing or errors:
        lines += ["", f"INCOMPLETE: {'; '.join(errors + [m + ': no test scores' for m in missing])}"]
    emit(lines, args.markdown)
    if missing or errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
