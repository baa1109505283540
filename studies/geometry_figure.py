"""Picture of rule v3's outcome: test image AUROC and escape @ A = 5 % per category, 256 px vs 512 px vs PatchCore.

Reads the same rows as select_geometry.py (K = 4, seeds 0-2) and draws what its --report table prints.

    python studies/geometry_figure.py runs/decision_v2 runs/geometry --out docs/decision/geometry_v3.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from select_geometry import OLD, PATCHCORE, load_rows, seed_mean  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("v2_dir")
    ap.add_argument("geometry_dir")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = load_rows(Path(args.v2_dir), Path(args.geometry_dir))
    cats = sorted({c for c, s in rows if s == 256})
    bars = (("PCSNet 256 px (old default)", 256, OLD, "#9aa5b1"), ("PCSNet 512 px (rule v3 default)", 512, OLD, "#1f6feb"),
            ("PatchCore edge 256 px", 256, PATCHCORE, "#d29922"))
    fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    x = np.arange(len(cats))
    for ax, (key, label) in zip(axes, (("test_image_auroc", "test image AUROC (%)"), ("test_escape_rate_a05", "escape @ A = 5 % (%)"))):
        for i, (name, size, variant, color) in enumerate(bars):
            vals = [np.nan if (m := seed_mean(rows, c, size, variant, key)) is None else m for c in cats]
            ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=name, color=color)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(40, 101)
    axes[1].legend(loc="upper left", bbox_to_anchor=(0.53, 0.99), fontsize=8)  # over hazelnut, whose escapes are 0
    axes[1].set_xticks(x, [c.replace("_", "\n", 1) for c in cats], fontsize=8)
    fig.suptitle("Rule v3 (input geometry): K = 4, mean of seeds 0-2; chosen on validation, test shown after the choice")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
