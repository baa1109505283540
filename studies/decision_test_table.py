"""Report (never select): the study's TEST columns per candidate, and the old default's diagnosis.

Reads the JSON lines decision_study.py wrote WITH test columns (runs/decision/test_k4_*.jsonl) and
prints, per candidate, the test image AUROC per category (and the mean), then the escape / false-alarm
rates at the line threshold, and the diagnosis of where the old default's maximum sits. The selection
(select_decision.py) does not read this file's input.

    python studies/decision_test_table.py runs/decision/test_k4_*.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl", nargs="+")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args(argv)
    rows = [json.loads(line) for p in args.jsonl for line in Path(p).read_text().splitlines()]
    cats = sorted({r["category"] for r in rows})
    by = {(r["category"], name): v for r in rows for name, v in r["variants"].items()}
    names = sorted({name for r in rows for name in r["variants"]})
    mean = {n: float(np.mean([by[(c, n)]["test_image_auroc"] for c in cats])) for n in names}
    print("| decision | " + " | ".join(cats) + " | mean |")
    print("|---|" + "---|" * (len(cats) + 1))
    for n in sorted(names, key=lambda n: -mean[n])[: args.top]:
        print(f"| {n.replace('|', ' / ')} | " + " | ".join(f"{by[(c, n)]['test_image_auroc']:.1f}" for c in cats)
              + f" | {mean[n]:.2f} |")
    print("\nescape / false alarm at the line threshold (%), old default vs nn1 (= PatchCore edge):")
    for c in cats:
        o, p = by[(c, "pcs|none|max")], by[(c, "nn1|none|max")]
        print(f"  {c}: old {o.get('test_escape_line', float('nan')):.1f} / {o.get('test_false_alarm_line', float('nan')):.1f}"
              f"   nn1 {p.get('test_escape_line', float('nan')):.1f} / {p.get('test_false_alarm_line', float('nan')):.1f}")
    print("\ndiagnosis of the old default (K=4, seed 0): hottest pixel in the outer 10 % band / inside the defect mask")
    for r in rows:
        d = r.get("diagnosis")
        if d:
            g, b = d["good"], d["defective"]
            inside = "n/a" if "argmax_inside_defect" not in b else f"{100 * b['argmax_inside_defect']:.0f} %"
            print(f"  {r['category']}: good max {g['max_mean']:.3f} ± {g['max_std']:.3f}, defective {b['max_mean']:.3f} ± "
                  f"{b['max_std']:.3f}; border band good {100 * g['argmax_in_border_band']:.0f} %, defective "
                  f"{100 * b['argmax_in_border_band']:.0f} %; defective argmax inside the mask {inside}")


if __name__ == "__main__":
    main()
