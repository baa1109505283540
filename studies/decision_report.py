"""Test-set figures of the chosen decision next to the old one, from ONE training per (category, K, seed).

Training does not depend on the decision (scoring.py), so the product's ``fit`` (the new default, or
whatever --set says) is run once and the test split is scored twice from the same backbone pass:
``new`` = the model's output (exactly what ``protospect eval --method pcsnet`` records) and ``old`` =
its CAS map alone with the plain maximum (the old default: same seed, same training, same map).
Both get image AUROC, pixel AUROC, AUPRO and the escape / false-alarm rates at the line threshold
(set from up to 30 train/good images that were not shots, as eval does). One JSON line per run.
With --figures, seed 0 writes the diagnosis picture of docs/decision.md for each K.

    OMP_NUM_THREADS=1 python studies/decision_report.py --data ../shared/data --category bottle \
        --shots 2 4 8 --seeds 0 1 2 --out runs/decision/report_bottle.jsonl --figures docs/decision
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from protospect.imageio import read_rgb
from protospect.runtime import line_threshold
from protospect.training import metrics
from protospect.training.data import MVTecCategory, load_image, sample_shots
from protospect.training.fewshot import TestSet, line_good_images
from protospect.training.methods.pcsnet import fit
from protospect.training.methods.pcsnet.train_loop import to_tensor
from protospect.training.methods.pcsnet.validate import _parse_set


@torch.no_grad()
def score_both(model, images, batch=8, desc=""):
    new_s, new_m, old_s, old_m = [], [], [], []
    for i in tqdm(range(0, len(images), batch), desc=desc, leave=False, disable=not desc):
        x = to_tensor(list(images[i:i + batch]), model.meta["mean"], model.meta["std"])
        maps = model.branch_maps(x)
        out = model.decide(maps)
        new_s.append(out.image_score.numpy())
        new_m.append(out.anomaly_map[:, 0].numpy())
        old_m.append(maps[0][:, 0].numpy())
        old_s.append(old_m[-1].reshape(len(x), -1).max(1))
    return (np.concatenate(new_s), np.concatenate(new_m)), (np.concatenate(old_s), np.concatenate(old_m))


def figures(test: TestSet, scored: dict, category: str, k: int, folder: Path):
    """Per decision in ``scored`` ({name: (scores, maps)}): the 4 good parts it scores highest and the 4
    defective parts it scores lowest, hottest pixel marked, plus the histogram of its image scores."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    good, bad = np.where(test.labels == 0)[0], np.where(test.labels == 1)[0]
    fig, axes = plt.subplots(2 * len(scored), 5, figsize=(15, 6.25 * len(scored)), squeeze=False)
    for block, name in enumerate(scored):
        scores, maps = scored[name]
        hot_good = good[np.argsort(-scores[good])][:4]  # good parts ranked most anomalous
        cold_bad = bad[np.argsort(scores[bad])][:4]  # defective parts ranked least anomalous
        lo, hi = np.percentile(maps[good], 50), np.percentile(maps, 99.9)
        for r, (ids, what) in enumerate(((hot_good, "good, highest"), (cold_bad, "defective, lowest"))):
            row = 2 * block + r
            for col, i in enumerate(ids):
                ax = axes[row, col]
                ax.imshow(test.images[i])
                ax.imshow(maps[i], cmap="jet", alpha=0.45, vmin=lo, vmax=hi)
                y, x = np.unravel_index(int(np.argmax(maps[i])), maps[i].shape)
                ax.plot(x, y, marker="x", color="white", markersize=14, mew=3)
                if test.masks is not None and test.labels[i] == 1:
                    ax.contour(test.masks[i], levels=[0.5], colors="lime", linewidths=1)
                ax.set_title(f"{name}: {what} score\n{scores[i]:.3g}", fontsize=9)
                ax.axis("off")
            for c in range(len(ids), 4):
                axes[row, c].axis("off")
        ax = axes[2 * block, 4]
        ax.hist([scores[good], scores[bad]], bins=25, label=["good", "defective"], color=["tab:green", "tab:red"], alpha=0.7)
        auc = 100 * metrics.image_auroc(test.labels, scores)
        ax.set_title(f"{name} image score, AUROC {auc:.1f}", fontsize=9)
        ax.legend(fontsize=8)
        axes[2 * block + 1, 4].axis("off")
    fig.suptitle(f"{category} K={k}, seed 0: old = CAS map max" + (", new = default decision" if "new" in scored else "")
                 + "; white x = hottest pixel, lime = defect mask")
    fig.tight_layout()
    fig.savefig(folder / f"diagnosis_{category}_K{k}.png", dpi=60)
    plt.close(fig)


def hottest_pixels(test: TestSet, maps: np.ndarray, label: int):
    """The test images of ``label`` -> (their indices, per image: is its hottest pixel in the outer 10 % band,
    the fraction of hottest pixels inside the defect mask: defective images with masks only, else None)."""
    size = maps.shape[-1]
    band = max(1, size // 10)
    idx = np.where(test.labels == label)[0]
    am = [np.unravel_index(int(np.argmax(maps[i])), maps[i].shape) for i in idx]
    border = [min(y, x, size - 1 - y, size - 1 - x) < band for y, x in am]
    in_mask = None
    if label == 1 and test.masks is not None:
        in_mask = float(np.mean([test.masks[i][y, x] > 0 for i, (y, x) in zip(idx, am)]))
    return idx, border, in_mask


def where_is_the_max(test: TestSet, maps: np.ndarray) -> dict:
    """Fraction of hottest pixels in the outer 10 % band, and inside the defect mask (defective images)."""
    out = {}
    for label, name in ((0, "good"), (1, "defective")):
        _, border, in_mask = hottest_pixels(test, maps, label)
        out[f"{name}_argmax_border"] = float(np.mean(border))
        if in_mask is not None:
            out["defective_argmax_in_mask"] = in_mask
    return out


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """--data, --category, --shots, --seeds: shared with decision_study.py."""
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap)
    ap.add_argument("--set", action="append", help="config override key=value (default: the preset's decision)")
    ap.add_argument("--figures", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cat = MVTecCategory(args.data, args.category)
    overrides = {"category": cat.name, **_parse_set(args.set)}
    test = TestSet.load(cat, 256)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for k in args.shots:
        for seed in args.seeds:
            shot_paths = sample_shots(cat.train_good, k, seed)
            t0 = time.perf_counter()
            model = fit([read_rgb(p) for p in shot_paths], "edge", seed, overrides, progress=False)
            fit_s = time.perf_counter() - t0
            if model.fusion is None:
                raise SystemExit("decision_report: the model has no decision beyond the plain map; nothing to compare")
            new, old = score_both(model, test.images, desc=f"{cat.name} K={k} seed={seed}")
            line_paths = line_good_images(cat.train_good, shot_paths, seed)
            line = score_both(model, np.stack([load_image(p, 256) for p in line_paths])) if line_paths else None
            row = {"category": cat.name, "K": k, "seed": seed, "fit_s": round(fit_s, 1),
                   "config": {key: model.cfg.__dict__[key] for key in ("fusion", "nn_rotations", "normalise", "image_score")}}
            for i, (name, (s, m)) in enumerate((("new", new), ("old", old))):
                r = {"image_auroc": 100 * metrics.image_auroc(test.labels, s)}
                if test.masks is not None:
                    r["pixel_auroc"] = 100 * metrics.pixel_auroc(test.masks, m)
                    r["aupro"] = 100 * metrics.aupro(test.masks, m)
                if line is not None:
                    at = metrics.threshold_stats(test.labels, s, line_threshold.choose(line[i][0]))
                    r["escape_line"] = 100 * at["escape_rate"]
                    r["false_alarm_line"] = 100 * at["false_alarm_rate"]
                if seed == args.seeds[0]:
                    r.update(where_is_the_max(test, m))
                row[name] = {key: round(float(v), 3) for key, v in r.items()}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{cat.name} K={k} seed={seed}: image AUROC old {row['old']['image_auroc']:.1f} -> new "
                  f"{row['new']['image_auroc']:.1f} (fit {fit_s:.0f} s)", flush=True)
            if args.figures and seed == args.seeds[0]:
                figures(test, {"new": new, "old": old}, cat.name, k, Path(args.figures))


if __name__ == "__main__":
    main()
