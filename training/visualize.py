"""Pictures of an evaluation: a grid of test images with heatmap overlays, and ROC curves per K.

Which test images appear is fixed by their position in the sorted test list (evenly spaced good
and defective ones), never by their scores, so the picture is not a hand-picked best case.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from protospect.files import write_atomic
from protospect.training import metrics

TILE = 192
# RGB. Ground truth is cyan: green and red mean the verdict (OK / NG) and nothing else.
GREEN, RED, WHITE, CYAN, YELLOW, GREY = (0, 190, 0), (220, 30, 30), (255, 255, 255), (0, 230, 255), (255, 215, 0), (90, 90, 90)
SCALE_PERCENTILE = 99.9  # top of the colour scale: this percentile of the good test images' map values


def _evenly_spaced(indices: np.ndarray, n: int) -> list[int]:
    if len(indices) <= n:
        return list(indices)
    return [int(indices[i]) for i in np.linspace(0, len(indices) - 1, n).round().astype(int)]


def overlay(image: np.ndarray, amap: np.ndarray, map_range, mask: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB image + anomaly map scaled by map_range (JET colours) + cyan ground-truth contour."""
    lo, hi = float(map_range[0]), float(map_range[1])
    norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]  # BGR -> RGB
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, CYAN, max(1, image.shape[0] // 128))
    return out


def grid_scale(labels: np.ndarray, maps: np.ndarray, calibration: dict) -> tuple[tuple[float, float], str]:
    """The colour scale of one grid, from normal statistics: median .. 99.9th percentile of the good test images'
    map values (a good part is blue, anything above nearly every normal pixel is red). Without good test images:
    the model's calibration map_range, else the maps' own min..max. Returns ((lo, hi), how it was set)."""
    good = maps[np.asarray(labels) == 0]
    if good.size:
        lo, hi = float(np.median(good)), float(np.percentile(good, SCALE_PERCENTILE))
        if hi > lo:
            return (lo, hi), f"median..p{SCALE_PERCENTILE:g} of good test maps"
    if calibration.get("map_range"):
        lo, hi = (float(v) for v in calibration["map_range"])
        return (lo, hi), "model map_range"
    return (float(maps.min()), float(maps.max())), "min..max of these maps"


def outcome(label: int, score: float, threshold: float) -> str:
    """TP defect caught, FN defect missed (an escape), FP good part flagged, TN good part passed."""
    ng = score >= threshold
    return ("TP" if ng else "FN") if label else ("FP" if ng else "TN")


OUTCOME_TEXT = {"TP": "TP caught", "FN": "FN MISSED", "FP": "FP false alarm", "TN": "TN"}


def _tile(image, amap, mask, score, threshold, map_range, caption, label: int = 0) -> np.ndarray:
    h, w = image.shape[:2]
    th = int(round(TILE * h / w))  # the image's own aspect (an aspect=keep model's H x W input); TILE wide
    tile = cv2.resize(overlay(image, amap, map_range, mask), (TILE, th), interpolation=cv2.INTER_AREA)
    verdict = "NG" if score >= threshold else "OK"
    mark = outcome(label, score, threshold)
    # verdict badge: filled red NG / green OK in the tile's corner
    cv2.rectangle(tile, (0, 0), (34, 18), RED if verdict == "NG" else GREEN, -1)
    cv2.putText(tile, verdict, (5, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, WHITE, 1, cv2.LINE_AA)
    if mark in ("FN", "FP"):  # a wrong verdict gets a yellow frame
        cv2.rectangle(tile, (0, 0), (TILE - 1, th - 1), YELLOW, 3)
    band = np.zeros((34, TILE, 3), np.uint8)
    truth = "good" if not label else caption.split("/")[0]
    cv2.putText(band, f"truth {truth}: {caption.split('/')[-1]}"[:30], (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, WHITE, 1,
                cv2.LINE_AA)
    cv2.putText(band, f"{OUTCOME_TEXT[mark]}  {score:.3g}", (4, 29), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                YELLOW if mark in ("FN", "FP") else WHITE, 1, cv2.LINE_AA)
    return np.vstack([tile, band])


def heatmap_grid(test, scores: np.ndarray, maps: np.ndarray, calibration: dict, path, title: str = "",
                 n_good: int = 4, n_defective: int = 8, columns: int = 6) -> Path:
    """Write a PNG grid: ``n_good`` good then ``n_defective`` defective test images with overlays.

    Colour scale per grid from normal statistics (grid_scale); each tile carries the verdict badge at the
    model's threshold (red NG / green OK), its outcome (TP / FN / FP / TN; wrong verdicts framed yellow),
    the ground truth in its title and as a cyan contour."""
    labels = np.asarray(test.labels)
    chosen = _evenly_spaced(np.flatnonzero(labels == 0), n_good) + _evenly_spaced(np.flatnonzero(labels == 1), n_defective)
    threshold = float(calibration["threshold"])
    map_range, how = grid_scale(labels, maps, calibration)
    tiles = []
    counts = dict.fromkeys(OUTCOME_TEXT, 0)
    for i in chosen:
        mask = test.masks[i] if test.masks is not None else None
        item = test.items[i]
        counts[outcome(int(labels[i]), float(scores[i]), threshold)] += 1
        tiles.append(_tile(test.images[i], maps[i], mask, float(scores[i]), threshold, map_range,
                           f"{item.defect_type}/{item.path.name}", label=int(labels[i])))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)]
    grid = np.vstack(rows)
    header = np.zeros((44, grid.shape[1], 3), np.uint8)
    line1 = (f"{title}   threshold {threshold:.3g}   " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    line2 = f"colour [{map_range[0]:.3g}, {map_range[1]:.3g}] ({how})   cyan = ground truth   badge = verdict"
    cv2.putText(header, line1, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.48, WHITE, 1, cv2.LINE_AA)
    cv2.putText(header, line2, (6, 37), cv2.FONT_HERSHEY_SIMPLEX, 0.42, WHITE, 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", np.vstack([header, grid])[:, :, ::-1])
    if not ok:
        raise OSError(f"could not encode {path}")
    write_atomic(path, data.tobytes())
    return path


def roc_plot(curves: dict[int, tuple[np.ndarray, np.ndarray]], path, title: str = "") -> Path:
    """Image-level ROC curves, one per K: ``curves[K] = (labels, scores)``."""
    import matplotlib  # noqa: PLC0415 (only the plots need it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for k in sorted(curves):
        labels, scores = curves[k]
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"K={k}  AUROC {100 * metrics.image_auroc(labels, scores):.1f}")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate (good flagged NG)", ylabel="true positive rate (defects caught)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import io  # noqa: PLC0415

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path
