"""Rule v7 (docs/decision.md section 17): aspect=keep against the squashed input, validation only.

Per (K, seed) cell of juice_bottle_loco, geometry=auto's choice (the margin rule of select_auto.py, rule v6's
``valn_*`` kinds) is made among the aspect=keep candidates (384 x 192, 704 x 384) and, separately, among the
squashed ones (256, 512) of studies/auto_queue.sh; the chosen model's planted-defect score is compared. Adopted when
aspect=keep's mean over the 9 cells is not below the squashed mean by more than SLACK. With --report, the test rows
follow (read after the choice): juice's rows under both, and the acceptance table with juice's rows replaced.

    cd studies && python select_aspect.py ../runs/aspect ../runs/auto [--report ../runs/decision_v2 ...] \\
        [--markdown F] [--figure F.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from protospect.imageio import size_text

import acceptance_table as at
import select_auto as sa

PART = "juice_bottle_loco"
KEEP_SMALL, KEEP_LARGE = ((384, 192), 32, 1024), ((704, 384), 64, 1024)
ASPECT = (1, 1, 1)  # the geometry key the report gives the aspect=keep choices
SLACK = 0.5


def chosen_score(x: dict) -> float:
    return x["large"] if x["chosen"] in (sa.LARGE, KEEP_LARGE) else x["small"]


def label(geom) -> str:
    return size_text(geom[0])


def juice_figure(rows, out: str, verdict: str) -> None:
    """Image AUROC and escape @ A = 5 % on juice's test split per K: 256 px, auto squashed, auto aspect=keep, PatchCore."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cols = {"256 px (old)": (at.OLD_GEOMETRY, at.OLD), "auto, squashed (default)": (sa.AUTO, at.OLD),
            f"auto, aspect=keep ({verdict})": (ASPECT, at.OLD), "PatchCore": (at.OLD_GEOMETRY, at.PATCHCORE)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, name in zip(axes, ("test_image_auroc", "test_escape_rate_a05"), ("image AUROC", "escape @ A = 5 %")):
        for i, (lab, (g, v)) in enumerate(cols.items()):
            vals = [np.mean([x for s in at.SEEDS if (x := at.value(rows, g, v, PART, k, s, key)) is not None] or [np.nan])
                    for k in at.KS]
            ax.bar(np.arange(len(at.KS)) + (i - 1.5) * 0.2, vals, 0.2, label=lab)
        ax.set_xticks(range(len(at.KS)), [f"K={k}" for k in at.KS])
        ax.set_title(f"{PART}: {name} (test split, mean of seeds 0-2)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(70, 100)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("aspect", help="folder of aspect_queue.sh's JSON lines")
    ap.add_argument("auto", help="folder of auto_queue.sh's JSON lines (the squashed candidates)")
    ap.add_argument("--report", nargs="*", default=None, help="folders with the squashed models' test rows")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args(argv)
    keep = sa.choices(at.load([args.aspect]), "valn_", KEEP_SMALL, KEEP_LARGE)
    squash = sa.choices(at.load([args.auto]), "valn_")
    cells = sorted(c for c in keep if c[0] == PART and c in squash)
    lines = [f"Rule v7 on {PART}: planted-defect score (mean of nsa_small, misplace, erase at native pixels; valn_*)\n",
             "| K | seed | squash 256 / 512 | chosen | keep 384x192 / 704x384 | chosen |", "|---|---|---|---|---|---|"]
    for c in cells:
        q, k = squash[c], keep[c]
        lines.append(f"| {c[1]} | {c[2]} | {q['small']:.1f} / {q['large']:.1f} | {label(q['chosen'])} | "
                     f"{k['small']:.1f} / {k['large']:.1f} | {label(k['chosen'])} |")
    text = "\n".join(lines) + "\n"
    if cells:
        mk, mq = np.mean([chosen_score(keep[c]) for c in cells]), np.mean([chosen_score(squash[c]) for c in cells])
        verdict = "adopted" if len(cells) == 9 and mk >= mq - SLACK else ("not adopted" if len(cells) == 9 else "incomplete")
        text += (f"\nAdoption ({len(cells)} of 9 cells): aspect=keep {mk:.2f} vs squash {mq:.2f} (slack {SLACK}): "
                 f"{verdict.upper()}\n")
    if args.report is not None:
        rows = at.load(args.report)  # the squashed models' test rows (auto_queue.sh ran most cells with --no-test)
        for key, r in at.load([args.auto, args.aspect]).items():
            rows.setdefault(key, r)
        for key, x in squash.items():  # geometry=auto's squashed choice, every category (rule v6)
            if (x["chosen"],) + key in rows:
                rows[(sa.AUTO,) + key] = rows[(x["chosen"],) + key]
                rows[(ASPECT,) + key] = rows[(x["chosen"],) + key]  # square parts: the same model under aspect=keep
        for key in cells:
            rows[(ASPECT,) + key] = rows[(keep[key]["chosen"],) + key]
        text += f"\n{PART}, the test split (read after the choice), old = 256 px squashed:\n\n"
        sub = {k: v for k, v in rows.items() if k[1] == PART}
        text += "new = auto, squashed (rule v6):\n\n" + at.markdown(sub, sa.AUTO).split("\n", 1)[1]
        text += "\nnew = auto, aspect=keep (rule v7):\n\n" + at.markdown(sub, ASPECT).split("\n", 1)[1]
        text += "\nAcceptance table, new = auto with aspect=keep:\n\n" + at.markdown(rows, ASPECT)
        if args.figure:
            juice_figure(rows, args.figure, verdict if cells else "incomplete")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
