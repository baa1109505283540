"""Side-by-side table of methods from one or more results.json files (the issue-3 acceptance check).

usage: python scripts/compare_methods.py RESULTS [RESULTS ...] [--shots 2 4 8] [--baseline patchcore]
RESULTS: a results.json file or the folder holding one (what `protospect eval --out` writes).
Prints, per category and K, image AUROC / pixel AUROC / AUPRO (mean over seeds) for every method, then
each method's mean over all (category, K) cells next to the baseline's over the same cells.
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(dirs):
    records = []
    for d in dirs:
        path = Path(d) / "results.json" if Path(d).is_dir() else Path(d)
        records += json.loads(path.read_text(encoding="utf-8"))
    return records


def fmt(v):
    return "–" if v is None else f"{v[0]:.1f}±{v[1]:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--baseline", default="patchcore")
    args = ap.parse_args()
    cells = {}
    for r in load(args.dirs):
        if r["K"] not in args.shots:
            continue
        key = (r["category"], r["method"], r["K"])
        if key in cells:  # another preset or --set run of the same cell: one of them would silently win
            old = cells[key]
            raise SystemExit(f"two records for {key}: preset {old.get('preset')} {old.get('overrides') or {}} and "
                             f"{r.get('preset')} {r.get('overrides') or {}}; compare one run per cell")
        cells[key] = r
    methods = sorted({m for _, m, _ in cells}, key=lambda m: (m != args.baseline, m))
    cats = sorted({c for c, _, _ in cells})
    metrics = ["image_auroc", "pixel_auroc", "aupro"]
    print("| category | K | " + " | ".join(f"{m} img / pix / AUPRO" for m in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for c in cats:
        for k in args.shots:
            row = [" / ".join(fmt(cells[(c, m, k)].get(x)) for x in metrics) if (c, m, k) in cells else "n/a" for m in methods]
            print(f"| {c} | {k} | " + " | ".join(row) + " |")
    print()
    for m in methods:
        if m == args.baseline:
            continue
        common = [(c, k) for c in cats for k in args.shots if (c, m, k) in cells and (c, args.baseline, k) in cells]
        sums = defaultdict(list)
        for c, k in common:
            for x in metrics:
                for who in (m, args.baseline):
                    v = cells[(c, who, k)].get(x)
                    if v is not None:
                        sums[(who, x)].append(v[0])
        parts = []
        for x in metrics:
            a, b = sums[(m, x)], sums[(args.baseline, x)]
            if a and b and len(a) == len(b):
                parts.append(f"{x} {sum(a) / len(a):.2f} vs {sum(b) / len(b):.2f} ({sum(a) / len(a) - sum(b) / len(b):+.2f})")
        print(f"{m} vs {args.baseline} over {len(common)} (category, K) cells: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
