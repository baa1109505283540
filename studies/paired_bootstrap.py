"""How sure is a category's gap to PatchCore? A paired bootstrap over its test images, all (K, seed) cells at once.

Reads the per-image scores of studies/fusion_queue.sh (the folders hold every seed at K = 2, 4, 8), takes rule
v11's choice per cell from validation only (select_v11.pick), and resamples the test split's good and defective
images separately, the same resample in every cell (the cells share one test split, so the comparison stays
paired). Prints the mean new - PatchCore and old - PatchCore image AUROC over the cells, with 95 % intervals.

    cd studies && python paired_bootstrap.py juice_bottle_loco 2=../runs/v11k 4=../runs/v11 8=../runs/v11k
    cd studies && python paired_bootstrap.py juice_bottle_loco 2=../runs/v11k 4=../runs/v11 8=../runs/v11k --rule v13
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from protospect.training.metrics import image_auroc
from select_640 import load_scores, qualifies
import select_v13
from select_v11 import rule_pick


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("category")
    ap.add_argument("folders", nargs="+", metavar="K=FOLDER")
    ap.add_argument("--data", default="../../shared/data")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--rule", choices=("v11", "v13"), default="v11",
                    help="v13: the new score is auto-w's (select_v13.cell: p or p+g per cell, section 34)")
    ap.add_argument("--runs", default="..", help="--rule v13: the folder holding runs/v11, v11k, v12, v13, v13k, v13g")
    args = ap.parse_args(argv)
    cells = []
    for item in args.folders:
        k, folder = item.split("=", 1)
        for s in (0, 1, 2):
            sc = load_scores(Path(folder), args.category, int(k), s)
            if sc is None or "labels" not in sc:
                raise SystemExit(f"{args.category} K = {k} seed {s}: no test split in {folder}")
            if args.rule == "v13":
                d = select_v13.cell(Path(args.runs), args.data, args.category, s, int(k))
                if "error" in d:
                    raise SystemExit(f"{args.category} K = {k} seed {s}: {d['error']}")
                new = d[d["pick"]]["test"]
            else:
                new = sc[rule_pick(sc, qualifies(args.data, args.category, int(k), s), "v11")]["test"]
            cells.append((sc["labels"], new, sc["s"]["test"], sc["nn"]["test"]))
    labels = cells[0][0]
    if any(len(c[0]) != len(labels) or (c[0] != labels).any() for c in cells):
        raise SystemExit("the cells do not share one test split")

    def gaps(idx):
        a = lambda x: image_auroc(labels[idx], x[idx])  # noqa: E731
        return (100 * np.mean([a(new) - a(nn) for _, new, _, nn in cells]),
                100 * np.mean([a(old) - a(nn) for _, _, old, nn in cells]))

    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    boot = np.array([gaps(np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
                     for _ in range(args.resamples)])
    point = gaps(np.arange(len(labels)))
    print(f"{args.category}: {len(cells)} cells, test split {len(neg)} good / {len(pos)} defective")
    for i, name in enumerate((f"new (rule {args.rule}) - PatchCore", "old (256 px) - PatchCore")):
        lo, hi = np.percentile(boot[:, i], [2.5, 97.5])
        print(f"{name}: {point[i]:+.2f}, 95 % interval {lo:+.2f} to {hi:+.2f}, "
              f"share of resamples >= -1: {np.mean(boot[:, i] >= -1):.2f}")


if __name__ == "__main__":
    main()
