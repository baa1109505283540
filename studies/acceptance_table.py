"""Issue [decision]'s acceptance table: old default vs new default vs PatchCore edge at K = 2, 4, 8, seeds 0-2,
7 dev categories, from the JSON lines of studies/decision_study.py (a report: nothing is chosen here).

Rows are told apart by their geometry, input size / grid / prototypes (rows written before these were
recorded have grid S/8 and one prototype per grid position; rule v2's rows are 256 px). The old default is
256 / 32 / 1024 (``pcs|none|max``), PatchCore edge its ``nn1|none|max`` at 256 px, the new default the
geometry given by --new. Escapes are reported at two thresholds set from held-out good images: ``line``
(the earlier max + margin rule) and ``A=5 %`` (the conformal rule the station's calibrate uses).

    python studies/acceptance_table.py runs/decision_v2 runs/geometry runs/geometry/k28 runs/full \\
        [--new 512/64/1024] [--markdown F] [--figure F.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

OLD, PATCHCORE = "pcs|none|max", "nn1|none|max"
OLD_GEOMETRY = (256, 32, 1024)
CATEGORIES = ("bottle", "deeppcb_00041", "deeppcb_44000", "elpv_mono", "hazelnut_toy", "juice_bottle_loco",
              "mpdd_metal_plate")
KS, SEEDS = (2, 4, 8), (0, 1, 2)


def geometry(row: dict) -> tuple:
    """(input size, grid, prototypes); the size is S, or (H, W) for a non-square input (aspect=keep)."""
    raw = row.get("input_size") or 256
    size = tuple(int(v) for v in raw) if isinstance(raw, list) else int(raw)
    grid = int(row.get("grid") or (size if isinstance(size, int) else max(size)) // 8)
    return size, grid, int(row.get("prototypes") or grid * grid)


def load(dirs) -> dict[tuple, dict]:
    """(geometry, category, K, seed) -> row; a later directory's row replaces an earlier one."""
    out = {}
    for d in dirs:
        for path in sorted(Path(d).glob("*.jsonl")):
            for line in path.read_text().splitlines():
                r = json.loads(line)
                out[(geometry(r), r["category"], r["K"], r["seed"])] = r
    return out


def value(rows, geom, variant, cat, k, seed, key) -> float | None:
    r = rows.get((geom, cat, k, seed))
    v = None if r is None else r["variants"].get(variant, {}).get(key)
    return None if v is None else float(v)


def columns(new_geom):
    return {"old": (OLD_GEOMETRY, OLD), "new": (new_geom, OLD), "PatchCore": (OLD_GEOMETRY, PATCHCORE)}


def paired(rows, new_geom, key, cells, patchcore: bool | None = None) -> dict[str, list[float]]:
    """column -> values over the (category, K, seed) cells where every column has the metric; PatchCore's
    column only for image AUROC unless ``patchcore`` says otherwise (its pixel rows are not needed)."""
    cols = columns(new_geom)
    out = {c: [] for c in cols}
    for cat, k, seed in cells:
        vals = {c: value(rows, g, v, cat, k, seed, key) for c, (g, v) in cols.items()}
        if not (key == "test_image_auroc" if patchcore is None else patchcore):
            vals = {c: x for c, x in vals.items() if c != "PatchCore"}
        if all(x is not None for x in vals.values()):
            for c, x in vals.items():
                out[c].append(x)
    return out


def markdown(rows, new_geom) -> str:
    cols = columns(new_geom)
    all_cells = [(c, k, s) for c in CATEGORIES for k in KS for s in SEEDS]
    done = sum(all(rows.get((g, c, k, s)) for g, _ in cols.values()) for c, k, s in all_cells)
    out = [f"{done} of {len(all_cells)} (category, K, seed) cells have all three columns; means are over those.\n",
           "| category | K | seeds | image AUROC old / new / PatchCore | pixel AUROC old / new | AUPRO old / new "
           "| escape @ line old / new | escape @ A=5 % old / new |", "|---|---|---|---|---|---|---|---|"]
    for cat in CATEGORIES:
        for k in KS:
            cells = [(cat, k, s) for s in SEEDS]
            img = paired(rows, new_geom, "test_image_auroc", cells)
            if not img["old"]:
                continue
            parts = [" / ".join(f"{np.mean(img[c]):.1f}" for c in cols)]
            for key in ("test_pixel_auroc", "test_aupro", "test_escape_line", "test_escape_rate_a05"):
                p = paired(rows, new_geom, key, cells)
                parts.append(" / ".join(f"{np.mean(p[c]):.1f}" for c in ("old", "new")) if p["old"] else "-")
            out.append(f"| {cat} | {k} | {len(img['old'])} | " + " | ".join(parts) + " |")
    out += ["", "| K | cells | image AUROC old / new / PatchCore (new - old) | pixel AUROC old / new | AUPRO old / new "
            "| escape @ line old / new | escape @ A=5 % old / new | false reject @ A=5 % old / new |",
            "|---|---|---|---|---|---|---|---|"]
    for ks in [(k,) for k in KS] + [KS]:
        cells = [(c, k, s) for c in CATEGORIES for k in ks for s in SEEDS]
        img = paired(rows, new_geom, "test_image_auroc", cells)
        if not img["old"]:
            continue
        gain = np.mean(img["new"]) - np.mean(img["old"])
        parts = [" / ".join(f"{np.mean(img[c]):.2f}" for c in cols) + f" ({gain:+.2f})"]
        for key in ("test_pixel_auroc", "test_aupro", "test_escape_line", "test_escape_rate_a05",
                    "test_false_reject_rate_a05"):
            p = paired(rows, new_geom, key, cells)
            parts.append(" / ".join(f"{np.mean(p[c]):.2f}" for c in ("old", "new")) if p["old"] else "-")
        label = "all" if len(ks) > 1 else str(ks[0])
        out.append(f"| {label} | {len(img['old'])} | " + " | ".join(parts) + " |")
    out += ["", "Per category, all K and seeds: new - PatchCore image AUROC (acceptance: none below -1)", ""]
    for cat in CATEGORIES:
        img = paired(rows, new_geom, "test_image_auroc", [(cat, k, s) for k in KS for s in SEEDS])
        if img["old"]:
            out.append(f"- {cat}: {np.mean(img['new']) - np.mean(img['PatchCore']):+.2f} over {len(img['old'])} cells")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="folders of decision_study JSON lines")
    ap.add_argument("--new", default="512/64/1024", help="the new default's input size / grid / prototypes")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--figure", default=None, help="a picture of image AUROC and escapes per category and K")
    args = ap.parse_args(argv)
    new_geom = tuple(int(x) for x in args.new.split("/"))
    rows = load(args.dirs)
    text = markdown(rows, new_geom)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.figure:
        figure(rows, new_geom, args.figure)


def figure(rows, new_geom, out: str, label: str | None = None) -> None:
    """Two panels, one group of bars per (category, K): image AUROC and escape @ A=5 %, old / new / PatchCore."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cols = columns(new_geom)
    colours = {"old": "#9aa5b1", "new": "#1f6feb", "PatchCore": "#d29922"}
    groups = [(c, k) for c in CATEGORIES for k in KS
              if paired(rows, new_geom, "test_image_auroc", [(c, k, s) for s in SEEDS])["old"]]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(groups) + 2), 6.5), sharex=True)
    x = np.arange(len(groups))
    for ax, (key, label) in zip(axes, (("test_image_auroc", "image AUROC (%)"), ("test_escape_rate_a05", "escape @ A=5 % (%)"))):
        for j, name in enumerate(cols):
            vals = []
            for c, k in groups:
                p = paired(rows, new_geom, key, [(c, k, s) for s in SEEDS], patchcore=True)
                vals.append(np.mean(p[name]) if p.get(name) else np.nan)
            ax.bar(x + (j - 1) * 0.27, vals, 0.27, label=name, color=colours[name])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(40, 101)
    axes[0].legend(ncol=3, fontsize=8, loc="lower left")
    axes[1].set_xticks(x, [f"{c}\nK={k}" for c, k in groups], rotation=90, fontsize=7)
    label = label or "/".join(map(str, new_geom))
    axes[0].set_title(f"Issue [decision] acceptance: old default (256 px) vs new ({label}) vs PatchCore edge; "
                      "mean of the seeds run", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
