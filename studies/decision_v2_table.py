"""Report (never select): rule v2's test table -- old default, the rule's default, the per-part rule, PatchCore.

Runs after studies/select_decision.py has chosen (docs/decision.md section 6). Reads the study's JSON lines
(with test columns) and the per-part choices that select_decision.py wrote, and prints per category the
mean over K and seeds of: image AUROC, pixel AUROC and AUPRO (of the chosen map: a decision's map is its
fusion and normalisation, whatever its image score), and the escape rate at the conformal A = 5 % point.
Then the same per K. ``nn1 / none / max`` is PatchCore edge on the same backbone features and shots.

    python studies/decision_v2_table.py runs/decision_v2/*.jsonl --default 'pcs|none|max' \
        --per-part runs/decision_v2/per_part.json [--markdown docs/results/decision_v2_test.md]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

OLD = "pcs|none|max"
PATCHCORE = "nn1|none|max"
METRICS = (("image AUROC", "test_image_auroc"), ("pixel AUROC", "test_pixel_auroc"), ("AUPRO", "test_aupro"),
           ("escape @ A=5 %", "test_escape_rate_a05"), ("false reject @ A=5 %", "test_false_reject_rate_a05"))


def map_variant(name: str) -> str:
    """The variant whose kept map is this decision's map (maps are kept for the ``max`` score only)."""
    fusion, norm, _ = name.split("|")
    return f"{fusion}|{norm}|max"


def value(row: dict, name: str, key: str) -> float | None:
    src = map_variant(name) if key in ("test_pixel_auroc", "test_aupro") else name
    v = row["variants"].get(src, {}).get(key)
    return None if v is None else float(v)


def table(rows, columns: dict, group) -> str:
    """columns: label -> callable(row) giving the decision name for that row."""
    groups = sorted({group(r) for r in rows}, key=str)
    out = []
    for label, key in METRICS:
        out.append(f"\n**{label}** (mean over the runs in each column)\n")
        out.append("| decision | " + " | ".join(map(str, groups)) + " | mean |")
        out.append("|---|" + "---|" * (len(groups) + 1))
        for col, pick in columns.items():
            cells, means = [], []
            for g in groups:
                vals = [value(r, pick(r), key) for r in rows if group(r) == g]
                vals = [v for v in vals if v is not None]
                m = float(np.mean(vals)) if vals else None
                cells.append("-" if m is None else f"{m:.1f}")
                if m is not None:
                    means.append(m)
            mean = f"{np.mean(means):.2f}" if len(means) == len(groups) else (f"{np.mean(means):.2f}*" if means else "-")
            out.append(f"| {col.replace('|', ' / ')} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl", nargs="+")
    ap.add_argument("--default", required=True, help="the rule's global choice (select_decision.py's output)")
    ap.add_argument("--per-part", required=True, help="select_decision.py --per-part output")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    rows = [json.loads(line) for p in args.jsonl for line in Path(p).read_text().splitlines()]
    choice = {(c["category"], c["K"], c["seed"]): c["choice"] for c in json.loads(Path(args.per_part).read_text())}
    columns = {f"old default ({OLD})": lambda r: OLD,
               f"rule v2 default ({args.default})": lambda r: args.default,
               "per-part rule": lambda r: choice[(r["category"], r["K"], r["seed"])],
               f"PatchCore edge ({PATCHCORE})": lambda r: PATCHCORE}
    counts = defaultdict(int)
    for c in choice.values():
        counts[c] += 1
    text = (f"{len(rows)} runs. Per-part choices: "
            + ", ".join(f"{n} x{k}" for n, k in sorted(counts.items(), key=lambda t: -t[1])) + "\n")
    text += "\n### Per category (K = 2, 4, 8 and seeds pooled)\n" + table(rows, columns, lambda r: r["category"])
    text += "\n### Per K (categories and seeds pooled)\n" + table(rows, columns, lambda r: f"K={r['K']}")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
