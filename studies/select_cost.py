"""Rule v4 (docs/decision.md section 11): a cheaper 512 px PCSNet, chosen from VALIDATION columns and a
measured cost only, then reported.

Candidates (decision ``pcs / none / max``; 512 px input for all):
  size512  the default since rule v3: one prototype per grid position, grid 64 (M = 4,096)
           rows: runs/geometry/<category>_512.jsonl (seed 0)
  m1024    a greedy coreset of M = 1,024 of those prototypes (--set prototypes=1024)
           rows: <study dir>/<category>_k4_s0_m1024.jsonl
  g32      grid 32 (M = 1,024, bins 32..4) on the same 512 px backbone maps
           rows: <study dir>/<category>_k4_s0_g32.jsonl

Selection, before any ``test_*`` key is opened: a candidate's value on a category is its validation image
AUROC (planted kinds texture and nsa_small, rule v3's) at K = 4, seed 0. Eligible = mean over the 7
categories at most MEAN_LOSS below size512's and no category more than CAT_LOSS below size512's. Of the
eligible, the lowest host-to-host p50 in one `studies/cost_bench.sh` run wins (size512 is always eligible).
The rule applies only when every category has every candidate's row. ``--report`` prints seed 0's test
split beside the old 256 px default and PatchCore edge afterwards.

    python studies/select_cost.py runs/decision_v2 runs/geometry runs/full --bench runs/cost_bench [--report]
        [--markdown F]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from select_geometry import METRICS, OLD, PATCHCORE, validation

K, SEED = 4, 0
MEAN_LOSS, CAT_LOSS = 1.0, 2.0
CANDIDATES = ("size512", "m1024", "g32")
BENCH = {"size512": "s512", "m1024": "m1024", "g32": "g32"}  # cost_bench.sh variant of each candidate


def _row(path: Path) -> dict | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["K"] == K and row["seed"] == SEED:
            return row
    return None


def load_rows(v2: Path, geometry: Path, study: Path, categories) -> dict[str, dict[str, dict | None]]:
    """candidate (and 'size256') -> category -> the K = 4 seed-0 row, None when it has not run."""
    out = {"size256": {c: _row(v2 / f"{c}.jsonl") for c in categories},
           "size512": {c: _row(geometry / f"{c}_512.jsonl") for c in categories}}
    for cand in CANDIDATES[1:]:
        out[cand] = {c: _row(study / f"{c}_k{K}_s{SEED}_{cand}.jsonl") for c in categories}
    return out


def bench_p50(bench: Path) -> dict[str, float | None]:
    """cost_bench variant -> host-to-host p50 (ms), None when not benched."""
    out = {}
    for name in ("s256", *BENCH.values()):
        f = bench / name / "bench" / "bench.json"
        out[name] = float(json.loads(f.read_text())["stages"]["host_to_host"]["p50"]) if f.is_file() else None
    return out


def choose(rows, p50) -> tuple[str | None, dict[str, dict[str, float]], dict[str, bool], list[str]]:
    """(chosen or None when something is missing, candidate -> category -> validation, eligibility, missing)."""
    cats = sorted(rows["size512"])
    missing = [f"{cand}/{c}" for cand in CANDIDATES for c in cats if rows[cand][c] is None]
    missing += [f"bench {BENCH[c]}" for c in CANDIDATES if p50.get(BENCH[c]) is None]
    per_cat = {cand: {c: validation(r) if r else float("nan") for c, r in rows[cand].items()} for cand in CANDIDATES}
    ref = per_cat["size512"]
    eligible = {cand: bool(np.mean([per_cat[cand][c] for c in cats]) >= np.mean([ref[c] for c in cats]) - MEAN_LOSS
                           and all(per_cat[cand][c] >= ref[c] - CAT_LOSS for c in cats)) for cand in CANDIDATES}
    if missing:
        return None, per_cat, eligible, missing
    return min((c for c in CANDIDATES if eligible[c]), key=lambda c: p50[BENCH[c]]), per_cat, eligible, []


def selection_markdown(choice, per_cat, eligible, p50) -> str:
    cats = sorted(per_cat["size512"])
    base = p50.get("s256")
    lines = ["| candidate | " + " | ".join(cats) + " | mean | eligible | CPU p50 ms (x 256 px) |",
             "|---|" + "---|" * (len(cats) + 3)]
    for cand in CANDIDATES:
        vals = [per_cat[cand][c] for c in cats]
        ms = p50.get(BENCH[cand])
        cost = "-" if ms is None else f"{ms:.1f}" + (f" ({ms / base:.1f}x)" if base else "")
        label = f"**{cand}** (chosen)" if cand == choice else cand
        mean = "-" if np.isnan(vals).any() else f"{np.mean(vals):.2f}"
        lines.append(f"| {label} | " + " | ".join("-" if np.isnan(v) else f"{v:.1f}" for v in vals)
                     + f" | {mean} | {'yes' if eligible[cand] else 'no'} | {cost} |")
    return "\n".join(lines) + "\n"


def report_markdown(rows) -> str:
    """Seed 0's test split, read only after the choice."""
    cats = sorted(rows["size512"])
    columns = [("size256 (old default)", "size256", OLD), *[(c, c, OLD) for c in CANDIDATES],
               ("PatchCore edge (256)", "size256", PATCHCORE)]
    out = []
    for label, key in METRICS:
        out += [f"\n**{label}** (K = 4, seed 0)\n", "| candidate | " + " | ".join(cats) + " | mean |",
                "|---|" + "---|" * (len(cats) + 1)]
        for name, cand, variant in columns:
            vals = [(rows[cand][c] or {}).get("variants", {}).get(variant, {}).get(key) for c in cats]
            cells = ["-" if v is None else f"{v:.1f}" for v in vals]
            got = [v for v in vals if v is not None]
            mean = (f"{np.mean(got):.2f}" + ("" if len(got) == len(cats) else "*")) if got else "-"
            out.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("v2_dir", help="rule v2's runs (256 px rows; the report's old default and PatchCore)")
    ap.add_argument("geometry_dir", help="rule v3's runs (<category>_512.jsonl)")
    ap.add_argument("study_dir", help="this study's runs (<category>_k4_s0_<candidate>.jsonl)")
    ap.add_argument("--bench", required=True, help="studies/cost_bench.sh output folder")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    cats = sorted(p.stem for p in Path(args.v2_dir).glob("*.jsonl"))
    rows = load_rows(Path(args.v2_dir), Path(args.geometry_dir), Path(args.study_dir), cats)
    p50 = bench_p50(Path(args.bench))
    choice, per_cat, eligible, missing = choose(rows, p50)
    text = "Validation (texture + nsa_small image AUROC, K = 4, seed 0) and CPU cost:\n\n"
    text += selection_markdown(choice, per_cat, eligible, p50)
    if missing:
        text += f"\nnot chosen: missing {', '.join(missing)}\n"
    else:
        text += f"\nchosen: {choice}\n"
        if args.report:
            text += "\nTest split (report; read after the choice):\n" + report_markdown(rows)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
