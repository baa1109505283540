"""Rule v5 (docs/decision.md section 14): the input size chosen per (category, K, seed) from validation only.

Reads the JSON lines of studies/auto_queue.sh (both candidates, planted kinds nsa_small / misplace / erase),
chooses per cell as training/methods/pcsnet/auto_geometry.py does, and applies the adoption test on the K = 4
cells. Only ``val_*`` columns are read for that. With --report, the acceptance table follows with ``auto`` as
the new default: each cell's test row is the one of the candidate chosen (from the folders given, which hold
the same models' test rows: training is bit-exact per seed on CPU, checked here on the shared columns).

    cd studies && python select_auto.py ../runs/auto [--report ../runs/decision_v2 ../runs/geometry ...] \\
        [--markdown F] [--figure F.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import acceptance_table as at

SMALL, LARGE = (256, 32, 1024), (512, 64, 1024)
AUTO = (0, 0, 0)  # the geometry key the report gives the chosen rows
KINDS = ("val_nsa_small", "val_misplace", "val_erase")
MARGIN, ADOPT_SLACK = 0.5, 0.25


def score(row: dict, prefix: str = "val_") -> float:
    v = row["variants"][at.OLD]
    return float(np.mean([v[prefix + k.removeprefix("val_")] for k in KINDS]))


def choices(vals, prefix: str = "val_", small=SMALL, large=LARGE) -> dict[tuple, dict]:
    """(category, K, seed) -> {"small", "large", "chosen"} for every cell both candidates ran (keys: the
    candidates' geometries)."""
    out = {}
    for c in at.CATEGORIES:
        for k in at.KS:
            for s in at.SEEDS:
                a, b = vals.get((small, c, k, s)), vals.get((large, c, k, s))
                if a is None or b is None or any(f"{prefix}erase" not in r["variants"][at.OLD] for r in (a, b)):
                    continue
                sa, sb = score(a, prefix), score(b, prefix)
                out[(c, k, s)] = {"small": sa, "large": sb, "chosen": large if sb > sa + MARGIN else small}
    return out


def check_same_models(vals, tests) -> float:
    """Largest |difference| of the texture / nsa_small columns between the new runs and the earlier rows of the
    same (geometry, cell): 0 when the models are the same."""
    diffs = []
    for key, r in vals.items():
        old = tests.get(key)
        if old is None:
            continue
        for col in ("val_texture", "val_nsa_small"):
            a, b = r["variants"][at.OLD].get(col), old["variants"][at.OLD].get(col)
            if a is not None and b is not None:
                diffs.append(abs(a - b))
    return max(diffs) if diffs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("auto", help="folder of auto_queue.sh's JSON lines")
    ap.add_argument("--report", nargs="*", default=None, help="folders with the test rows (acceptance_table's)")
    ap.add_argument("--native", action="store_true", help="rule v6: choose on the valn_* columns (planted at native pixels)")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args(argv)
    vals = at.load([args.auto])
    prefix = "valn_" if args.native else "val_"
    ch = choices(vals, prefix)
    lines = [f"Rule {'v6 (planted at native pixels, valn_*)' if args.native else 'v5 (planted at model resolution, val_*)'}\n",
             "| category | K | seeds | val score 256 / 512 (mean of nsa_small, misplace, erase) | chosen |",
             "|---|---|---|---|---|"]
    for c in at.CATEGORIES:
        for k in at.KS:
            cells = [ch[(c, k, s)] for s in at.SEEDS if (c, k, s) in ch]
            if cells:
                picks = "/".join("512" if x["chosen"] == LARGE else "256" for x in cells)
                lines.append(f"| {c} | {k} | {len(cells)} | {np.mean([x['small'] for x in cells]):.1f} / "
                             f"{np.mean([x['large'] for x in cells]):.1f} | {picks} |")
    k4 = [x for (c, k, s), x in ch.items() if k == 4]
    text = "\n".join(lines) + "\n"
    if k4:
        auto_mean = np.mean([x["large"] if x["chosen"] == LARGE else x["small"] for x in k4])
        large_mean = np.mean([x["large"] for x in k4])
        adopted = len(k4) == 21 and auto_mean >= large_mean - ADOPT_SLACK
        text += (f"\nAdoption (K = 4, {len(k4)} of 21 cells): auto {auto_mean:.2f} vs m1024 {large_mean:.2f} "
                 f"(slack {ADOPT_SLACK}): {'ADOPTED' if adopted else 'not adopted' if len(k4) == 21 else 'incomplete'}; "
                 f"auto chose 256 px in {sum(x['chosen'] == SMALL for x in ch.values())} of {len(ch)} cells\n")
    if args.report is not None:
        tests = at.load(args.report)
        text += f"\nSame models as the test rows: largest texture / nsa_small difference {check_same_models(vals, tests):.3g}\n"
        for key, r in vals.items():  # the cells only the new runs scored on the test split
            if "test_image_auroc" in r["variants"][at.OLD] and key not in tests:
                tests[key] = r
        for (c, k, s), x in ch.items():
            row = tests.get((x["chosen"], c, k, s))
            if row is not None:
                tests[(AUTO, c, k, s)] = row
        text += "\nAcceptance table, new = auto (per cell the chosen candidate's test row):\n\n" + at.markdown(tests, AUTO)
        text += "\nThe same cells with new = m1024 (rule v4's default):\n\n" + at.markdown(tests, LARGE)
        if args.figure:
            at.figure(tests, AUTO, args.figure, label=f"geometry=auto, rule {'v6' if args.native else 'v5'}")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
