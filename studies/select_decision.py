"""Choose PCSNet's default image-level decision from the study's VALIDATION columns only.

Reads the JSON lines of studies/decision_study.py and never opens a ``test_*`` key. The rule, fixed
before any test figure of the study was looked at (docs/decision.md):

1. candidates are the decisions the product can export: fusion pcs | pcs+nn1 | pcs+nn4, any
   normalisation, max, top-1 % or local-peak score (nn-only variants are PatchCore and are shown for reference);
2. a candidate's value on a category is its validation image AUROC averaged over the planted kinds
   (NSA self-swap, DTD texture), K and seeds;
3. eligible: on no category more than 1 point below the old default (pcs|none|max);
4. the default is the eligible candidate with the highest mean over categories; candidates within
   0.1 point of it count as tied and the cheapest wins (nn1 before nn4, global before position,
   max before top).

    python studies/select_decision.py runs/decision/*.jsonl [--markdown docs/results/decision_selection.md]

Rule v2 (``--kinds texture nsa_small``), written down and committed before its study ran
(docs/decision.md section 6): the same four steps on the planted kinds ``texture`` and ``nsa_small``
only -- the large NSA kind is PCSNet's own training family and favours the CAS map whatever the real
defects are -- over K = 2, 4, 8 and seeds 0, 1, 2. ``--per-part`` adds the per-part rule a station
can apply at registration: for each (category, K, seed) keep the old decision unless a product
candidate beats it on that run's validation by more than PER_PART_MARGIN points (then the best one,
cheapest among those within TIE of it).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

OLD = "pcs|none|max"
PRODUCT_FUSIONS = ("pcs", "pcs+nn1", "pcs+nn4")
COST = {"pcs": 0, "pcs+nn1": 1, "pcs+nn4": 2, "none": 0, "global": 0, "position": 1, "max": 0, "top": 1, "peak": 1}
MAX_LOSS = 1.0
TIE = 0.1
PER_PART_MARGIN = 2.0  # 20 normals vs ~20 planted images: AUROC steps of 0.25; switching needs a clear gain


def _val(v: dict, kinds) -> float:
    keys = [k for k in v if k.startswith("val_")] if kinds is None else [f"val_{k}" for k in kinds]
    return float(np.mean([v[k] for k in keys]))


def load_validation(paths, kinds=None) -> dict[str, dict[str, list[float]]]:
    """variant -> category -> per-(K, seed) validation AUROC (mean over the planted kinds; all kinds when None)."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            for name, v in row["variants"].items():
                table[name][row["category"]].append(_val(v, kinds))
    return table


def _cost(name: str) -> int:
    return sum(COST[p] for p in name.split("|"))


def per_part(paths, kinds=None) -> list[dict]:
    """The registration rule, run by run: (category, K, seed, chosen variant), from validation keys only."""
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            vals = {n: _val(v, kinds) for n, v in row["variants"].items() if n.split("|")[0] in PRODUCT_FUSIONS}
            best = max(vals.values())
            choice = OLD
            if best > vals[OLD] + PER_PART_MARGIN:
                choice = min((n for n in vals if vals[n] >= best - TIE), key=lambda n: (_cost(n), -vals[n]))
            out.append({"category": row["category"], "K": row["K"], "seed": row["seed"], "choice": choice})
    return out


def choose(table) -> tuple[str, dict[str, dict[str, float]]]:
    per_cat = {name: {c: float(np.mean(v)) for c, v in cats.items()} for name, cats in table.items()}
    cats = sorted(per_cat[OLD])
    means = {name: float(np.mean([pc[c] for c in cats])) for name, pc in per_cat.items()}
    eligible = [n for n in per_cat if n.split("|")[0] in PRODUCT_FUSIONS
                and all(per_cat[n][c] >= per_cat[OLD][c] - MAX_LOSS for c in cats)]
    if not eligible:
        return OLD, per_cat
    best = max(means[n] for n in eligible)
    tied = [n for n in eligible if means[n] >= best - TIE]
    return min(tied, key=lambda n: (_cost(n), -means[n])), per_cat


def markdown(choice: str, per_cat) -> str:
    cats = sorted(per_cat[OLD])
    means = {n: float(np.mean([pc[c] for c in cats])) for n, pc in per_cat.items()}
    lines = ["| decision (fusion / normalise / score) | " + " | ".join(cats) + " | mean | eligible |",
             "|---|" + "---|" * (len(cats) + 2)]
    for name in sorted(per_cat, key=lambda n: -means[n]):
        ok = name.split("|")[0] in PRODUCT_FUSIONS and all(per_cat[name][c] >= per_cat[OLD][c] - MAX_LOSS for c in cats)
        label = name.replace("|", " / ")
        if name == choice:
            label = f"**{label}** (chosen)"
        elif name == OLD:
            label = f"{label} (old default)"
        lines.append(f"| {label} | " + " | ".join(f"{per_cat[name][c]:.1f}" for c in cats)
                     + f" | {means[name]:.2f} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl", nargs="+")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--kinds", nargs="+", default=None, help="planted kinds to average (default: all in the file)")
    ap.add_argument("--per-part", default=None, help="write the per-part choices (JSON) here")
    args = ap.parse_args(argv)
    choice, per_cat = choose(load_validation(args.jsonl, args.kinds))
    if args.per_part:
        Path(args.per_part).write_text(json.dumps(per_part(args.jsonl, args.kinds), indent=1))
    table = markdown(choice, per_cat)
    print(table)
    print(f"chosen: {choice}")
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    main()
