"""Rule v8 (docs/decision.md section 20): fuse the 256 px and 512 px models' image scores, chosen per part from
validation only.

Reads the per-image scores that studies/fusion_queue.sh saved (decision_study.py --save-scores) for both input
sizes of each (category, K, seed). Each model's image score is standardised by its own normal statistics (mean
and std of the shots' leave-one-out + jitter scores, ``normal_calib``: what calibration computes from the shots,
no held-out or test image); the fused score is the mean of the two. Per cell, three candidates:

  s  the 256 px model (grid 32)            cost 1x
  l  the 512 px model (1,024 prototypes)   cost ~5.3x (decision.md section 12)
  f  s and l fused                          cost ~6.3x as two graphs, ~5.5x with the 256 px input pooled in-graph

Validation score: rule v6's, the mean image AUROC of the 20 held-out normals against nsa_small / misplace / erase
planted at native pixels (``valn_*``). Choice (auto3): rule v6's between s and l (l when it beats s by more than
MARGIN), then f when it beats that choice by more than MARGIN. Adoption: auto3's mean validation score over the
K = 4 cells at least GAIN above rule v6's. Only validation arrays are read for that; --report then adds the test
split (image AUROC, escape / false reject at A = 5 %).

    cd studies && python select_fusion.py ../runs/fusion [--report] [--markdown F] [--figure F.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from protospect.training import metrics
from protospect.training.fewshot import line_metrics

CATEGORIES = ("bottle", "deeppcb_00041", "deeppcb_44000", "elpv_mono", "hazelnut_toy", "juice_bottle_loco",
              "mpdd_metal_plate")
KINDS = ("valn_nsa_small", "valn_misplace", "valn_erase")
PCS, NN = "pcs|none|max", "nn1|none|max"
MARGIN, GAIN = 0.5, 0.25
SETS = ("val_normal", *KINDS, "valn_transplant", "valn_warp", "line_good", "test")  # transplant: rule v11; warp: v13


def npz_path(folder: Path, c: str, k: int, s: int, size: int) -> Path:
    """Where decision_study.py --save-scores put one job's per-image scores."""
    return folder / f"{c}_k{k}_s{s}_{size}.jsonl.k{k}s{s}.npz"


def sets_of(z, variant: str = PCS) -> dict:
    """{set: scores} of one variant in a saved file."""
    return {st: z[f"{variant}::{st}"] for st in SETS if f"{variant}::{st}" in z}


def load_cell(folder: Path, c: str, k: int, s: int) -> dict | None:
    """{"s": {set: scores}, "l": ..., "f": ..., "nn": ..., "labels": ...} or None when a size is missing."""
    out = {}
    for key, size in (("s", 256), ("l", 512)):
        p = npz_path(folder, c, k, s, size)
        if not p.exists():
            return None
        z = np.load(p)
        calib = z[f"{PCS}::normal_calib"]
        mu, sd = float(np.mean(calib)), float(np.std(calib)) or 1.0
        out[key] = {st: (v - mu) / sd for st, v in sets_of(z).items()}
        if key == "s":
            out["nn"] = sets_of(z, NN)
            if "test_labels" in z:
                out["labels"] = z["test_labels"].astype(int)
    out["f"] = {st: (out["s"][st] + out["l"][st]) / 2 for st in out["s"] if st in out["l"]}
    return out


def auroc(good: np.ndarray, bad: np.ndarray) -> float:
    return 100 * metrics.image_auroc(np.r_[np.zeros(len(good)), np.ones(len(bad))], np.r_[good, bad])


def val_score(sc: dict) -> float:
    return float(np.mean([auroc(sc["val_normal"], sc[k]) for k in KINDS]))


def choose(v: dict) -> tuple[str, str]:
    """(rule v6's choice, auto3's choice) from the candidates' validation scores."""
    v6 = "l" if v["l"] > v["s"] + MARGIN else "s"
    return v6, ("f" if v["f"] > v[v6] + MARGIN else v6)


def test_row(sc: dict, labels: np.ndarray) -> dict:
    row = {"auroc": 100 * metrics.image_auroc(labels, sc["test"])}
    lm = line_metrics(labels, sc["test"], sc.get("line_good"))
    row["escape"] = None if lm["escape_rate_a05"] is None else 100 * lm["escape_rate_a05"]
    row["frr"] = None if lm["false_reject_rate_a05"] is None else 100 * lm["false_reject_rate_a05"]
    return row


def verdict_line(rule: str, adopted: bool, complete: bool, k: int) -> str:
    """The last line of a selection: the rule's outcome at K = 4, where its gates decide; a note at other K."""
    if k != 4:
        return f"(the gates decide at K = 4; at K = {k} they are reported only)"
    return f"Rule {rule}: {'ADOPTED' if adopted else 'NOT ADOPTED' + ('' if complete else ' (incomplete)')}"


def mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--report", action="store_true", help="after the choice: the test split")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    cells = {}
    for c in CATEGORIES:
        for s in (0, 1, 2):
            cell = load_cell(folder, c, args.k, s)
            if cell is not None:
                cells[(c, s)] = cell
    lines = [f"Rule v8 (section 20), K = {args.k}: {len(cells)} of {3 * len(CATEGORIES)} cells have both sizes.", "",
             "| category | seed | val score s / l / f | rule v6 | auto3 |", "|---|---|---|---|---|"]
    choice, gains = {}, []
    for (c, s), cell in cells.items():
        v = {key: val_score(cell[key]) for key in ("s", "l", "f")}
        v6, a3 = choose(v)
        choice[(c, s)] = (v6, a3)
        gains.append(v[a3] - v[v6])
        lines.append(f"| {c} | {s} | {v['s']:.1f} / {v['l']:.1f} / {v['f']:.1f} | {v6} | {a3} |")
    gain = mean(gains)
    adopted = len(cells) == 3 * len(CATEGORIES) and gain >= GAIN
    lines += ["", f"auto3 - rule v6, mean validation score over {len(cells)} cells: {gain:+.3f} (needs >= {GAIN} over "
              f"all 21): {'ADOPTED' if adopted else 'NOT ADOPTED'}; f chosen in "
              f"{sum(a == 'f' for _, a in choice.values())} cells"]
    if args.report:
        lines += ["", "Test split (read after the choice). Image AUROC / escape @ A = 5 % / false reject @ A = 5 %, "
                  "mean over seeds:", "",
                  "| category | s (256 px) | l (512 px) | f (fused) | rule v6 (default) | auto3 | PatchCore edge |",
                  "|---|---|---|---|---|---|---|"]
        table = {}
        for c in CATEGORIES:
            rows = {name: [] for name in ("s", "l", "f", "v6", "a3", "nn")}
            for s in (0, 1, 2):
                cell = cells.get((c, s))
                if cell is None or "labels" not in cell:
                    continue
                t = {key: test_row(cell[key], cell["labels"]) for key in ("s", "l", "f", "nn")}
                v6, a3 = choice[(c, s)]
                for name in ("s", "l", "f", "nn"):
                    rows[name].append(t[name])
                rows["v6"].append(t[v6])
                rows["a3"].append(t[a3])
            if not rows["s"]:
                continue
            table[c] = {n: {m: mean([r[m] for r in rs]) for m in ("auroc", "escape", "frr")} for n, rs in rows.items()}
            cells_txt = [f"{table[c][n]['auroc']:.1f} / {table[c][n]['escape']:.1f} / {table[c][n]['frr']:.1f}"
                         for n in ("s", "l", "f", "v6", "a3", "nn")]
            lines.append(f"| {c} | " + " | ".join(cells_txt) + " |")
        if table:
            avg = {n: {m: mean([table[c][n][m] for c in table]) for m in ("auroc", "escape", "frr")}
                   for n in ("s", "l", "f", "v6", "a3", "nn")}
            lines.append(f"| **mean of {len(table)}** | " + " | ".join(
                f"{avg[n]['auroc']:.2f} / {avg[n]['escape']:.1f} / {avg[n]['frr']:.1f}"
                for n in ("s", "l", "f", "v6", "a3", "nn")) + " |")
            lines += ["", "Against PatchCore edge (image AUROC, acceptance: none below -1): " + ", ".join(
                f"{c} v6 {table[c]['v6']['auroc'] - table[c]['nn']['auroc']:+.1f} / auto3 "
                f"{table[c]['a3']['auroc'] - table[c]['nn']['auroc']:+.1f}" for c in table)]
            if args.figure:
                _figure(table, Path(args.figure))
    emit(lines, args.markdown)


def emit(lines: list[str], markdown: str | None) -> None:
    """The report on stdout, and as a markdown file when asked."""
    text = "\n".join(lines)
    print(text)
    if markdown:
        Path(markdown).write_text(text + "\n")


def _figure(table: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = (("s", "256 px"), ("l", "512 px"), ("f", "fused"), ("v6", "rule v6 (default)"), ("a3", "auto3"),
             ("nn", "PatchCore edge"))
    cats = list(table)
    x = np.arange(len(cats))
    fig, ax = plt.subplots(figsize=(12, 4.4))
    for i, (key, label) in enumerate(names):
        ax.bar(x + (i - 2.5) * 0.13, [table[c][key]["auroc"] for c in cats], 0.13, label=label)
    ax.set_xticks(x, [c.replace("_", "\n", 1) for c in cats], fontsize=8)
    ax.set_ylim(40, 101)
    ax.set_ylabel("test image AUROC (K = 4, mean of seeds 0-2)")
    ax.set_title("Rule v8: 256 px, 512 px and their fused image score (test split, read after the choice)")
    ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
