"""Rule v3 (docs/decision.md section 9): choose PCSNet's input geometry from VALIDATION columns only, then report.

Candidates (the decision stays ``pcs / none / max``; only the input size changes):
  size256  the old default: rule v2's K = 4 rows (runs/decision_v2/<category>.jsonl)
  size512  every part at 512 px (runs/geometry/<category>_512.jsonl)
  native   the part's own pixels, never upscaled: the shots' shorter side rounded down to a multiple of
           64, capped at 512 (runs/geometry/<category>_<S>.jsonl, or the 256 rows)

Selection (before any ``test_*`` key is opened): a candidate's value on a category is its validation
image AUROC averaged over the planted kinds texture and nsa_small and over seeds 0-2; eligible = no
category more than 1 point below size256; the highest mean over categories wins; within 0.1 the cheaper
(size256 < native < size512). The rule applies only when every category has all three seeds for every
size a candidate needs. ``--report`` then prints the test table of the three candidates and PatchCore edge.

    python studies/select_geometry.py runs/decision_v2 runs/geometry --data ../shared/data [--report]
        [--other-k runs/geometry/k28] [--markdown F]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from protospect.imageio import read_rgb
from protospect.training.data import MVTecCategory

OLD = "pcs|none|max"
PATCHCORE = "nn1|none|max"
KINDS = ("texture", "nsa_small")
K, SEEDS = 4, (0, 1, 2)
MAX_LOSS, TIE = 1.0, 0.1
CANDIDATES = ("size256", "native", "size512")  # cheapest first
METRICS = (("image AUROC", "test_image_auroc"), ("pixel AUROC", "test_pixel_auroc"), ("AUPRO", "test_aupro"),
           ("escape @ A=5 %", "test_escape_rate_a05"), ("false reject @ A=5 %", "test_false_reject_rate_a05"))


def native_size(shorter_side: int) -> int:
    """The largest multiple of 64 not above the shots' shorter side, capped at 512 (grid S/8 keeps bins S/8..S/64 exact)."""
    return int(max(64, min(512, shorter_side // 64 * 64)))


def load_rows(v2: Path, geometry: Path) -> dict[tuple[str, int], dict[int, dict]]:
    """(category, input size) -> seed -> row, K = 4 only."""
    out: dict[tuple[str, int], dict[int, dict]] = {}
    files = [(p, 256) for p in sorted(v2.glob("*.jsonl"))]
    files += [(p, int(p.stem.rsplit("_", 1)[1])) for p in sorted(geometry.glob("*_*.jsonl"))]
    for path, size in files:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["K"] == K and row["seed"] in SEEDS:
                out.setdefault((row["category"], int(row.get("input_size", size))), {})[row["seed"]] = row
    return out


def sizes_for(categories, data: str) -> dict[str, dict[str, int]]:
    """candidate -> category -> input size."""
    native = {}
    for c in categories:
        h, w = read_rgb(MVTecCategory(data, c).train_good[0]).shape[:2]
        native[c] = native_size(min(h, w))
    return {"size256": {c: 256 for c in categories}, "native": native, "size512": {c: 512 for c in categories}}


def validation(row: dict) -> float:
    v = row["variants"][OLD]
    return float(np.mean([v[f"val_{k}"] for k in KINDS]))


def choose(rows, sizes) -> tuple[str | None, dict[str, dict[str, float]], list[str]]:
    """(chosen candidate or None when runs are missing, candidate -> category -> validation value, missing runs)."""
    cats = sorted(sizes["size256"])
    missing = sorted({f"{c}@{s} seed {sd}" for cand in CANDIDATES for c, s in sizes[cand].items()
                      for sd in SEEDS if sd not in rows.get((c, s), {})})
    per_cat = {cand: {c: float(np.mean([validation(r) for r in rows.get((c, s), {}).values()] or [np.nan]))
                      for c, s in sizes[cand].items()} for cand in CANDIDATES}
    if missing:
        return None, per_cat, missing
    means = {cand: float(np.mean([per_cat[cand][c] for c in cats])) for cand in CANDIDATES}
    eligible = [cand for cand in CANDIDATES
                if all(per_cat[cand][c] >= per_cat["size256"][c] - MAX_LOSS for c in cats)]
    best = max(means[c] for c in eligible)
    return next(c for c in CANDIDATES if c in eligible and means[c] >= best - TIE), per_cat, []


def seed_mean(rows, category: str, size: int, variant: str, key: str) -> float | None:
    """A test figure of one (category, input size), mean over the seeds that have it; None when none has."""
    vals = [r["variants"][variant].get(key) for r in rows.get((category, size), {}).values() if variant in r["variants"]]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def selection_markdown(choice, per_cat, sizes) -> str:
    cats = sorted(sizes["size256"])
    lines = ["| candidate | " + " | ".join(cats) + " | mean | eligible |", "|---|" + "---|" * (len(cats) + 2)]
    for cand in CANDIDATES:
        vals = [per_cat[cand][c] for c in cats]
        ok = all(per_cat[cand][c] >= per_cat["size256"][c] - MAX_LOSS for c in cats)
        label = f"**{cand}** (chosen)" if cand == choice else cand
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f} @{sizes[cand][c]}" for v, c in zip(vals, cats))
                     + f" | {np.nanmean(vals):.2f} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def report_markdown(rows, sizes) -> str:
    """Test columns, read only after the choice: mean over seeds per category, then the mean over categories."""
    cats = sorted(sizes["size256"])
    columns = {cand: (lambda c, cand=cand: (sizes[cand][c], OLD)) for cand in CANDIDATES}
    columns["PatchCore edge (nn1 / none / max, 256)"] = lambda c: (256, PATCHCORE)
    out = []
    for label, key in METRICS:
        out.append(f"\n**{label}** (K = 4, mean of seeds 0-2)\n")
        out.append("| candidate | " + " | ".join(cats) + " | mean |")
        out.append("|---|" + "---|" * (len(cats) + 1))
        for name, pick in columns.items():
            cells, means = [], []
            for c in cats:
                m = seed_mean(rows, c, *pick(c), key)
                cells.append("-" if m is None else f"{m:.1f}")
                if m is not None:
                    means.append(m)
            mean = f"{np.mean(means):.2f}" + ("" if len(means) == len(cats) else "*") if means else "-"
            out.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(out) + "\n"


def _slashed(key: str, *variants: dict) -> str:
    return " / ".join("-" if v.get(key) is None else f"{v[key]:.1f}" for v in variants)


def other_k_markdown(v2: Path, other: Path) -> str:
    """Report only: 512 px rows at other K (runs/geometry/k28/<category>_512.jsonl) beside rule v2's 256 px rows."""
    base = {(r["category"], r["K"], r["seed"]): r for p in sorted(v2.glob("*.jsonl"))
            for r in map(json.loads, p.read_text().splitlines())}
    out = ["| category | K | seed | image AUROC 512 / 256 / PatchCore | AUPRO 512 / 256 | escape @ A=5 % 512 / 256 |",
           "|---|---|---|---|---|---|"]
    for path in sorted(other.glob("*_512.jsonl")):
        for r in map(json.loads, path.read_text().splitlines()):
            o = base.get((r["category"], r["K"], r["seed"]))
            if o is None:
                continue
            a, b, pc = r["variants"][OLD], o["variants"][OLD], o["variants"][PATCHCORE]
            out.append(f"| {r['category']} | {r['K']} | {r['seed']} | {_slashed('test_image_auroc', a, b, pc)} | "
                       f"{_slashed('test_aupro', a, b)} | {_slashed('test_escape_rate_a05', a, b)} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("v2_dir", help="rule v2's runs (the 256 px rows)")
    ap.add_argument("geometry_dir", help="this study's runs, <category>_<size>.jsonl")
    ap.add_argument("--data", required=True, help="the dev data (the shots' pixel size decides `native`)")
    ap.add_argument("--report", action="store_true", help="after the choice, print the test table")
    ap.add_argument("--other-k", default=None, help="with --report: a folder of 512 px rows at other K to report beside 256")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    rows = load_rows(Path(args.v2_dir), Path(args.geometry_dir))
    cats = sorted({c for c, s in rows if s == 256})
    sizes = sizes_for(cats, args.data)
    choice, per_cat, missing = choose(rows, sizes)
    text = "Validation (texture + nsa_small image AUROC, mean of seeds; @ input size):\n\n"
    text += selection_markdown(choice, per_cat, sizes)
    if missing:
        text += f"\nnot chosen: {len(missing)} runs missing ({', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''})\n"
    else:
        text += f"\nchosen: {choice}\n"
        if args.report:
            text += "\nTest split (report; read after the choice):\n" + report_markdown(rows, sizes)
            if args.other_k:
                text += "\nOther K (report only):\n\n" + other_k_markdown(Path(args.v2_dir), Path(args.other_k))
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
