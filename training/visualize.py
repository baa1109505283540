"""Pictures of an evaluation: a grid of test images with heatmap overlays, and ROC curves per K.

Which test images appear is fixed by their position in the sorted test list (evenly spaced good
and defective ones), never by their scores, so the picture is not a hand-picked best case.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from protospect.training import metrics

TILE = 192
GREEN, RED, WHITE = (0, 200, 0), (230, 40, 40), (255, 255, 255)  # RGB


def _evenly_spaced(indices: np.ndarray, n: int) -> list[int]:
    if len(indices) <= n:
        return list(indices)
    return [int(indices[i]) for i in np.linspace(0, len(indices) - 1, n).round().astype(int)]


def overlay(image: np.ndarray, amap: np.ndarray, map_range, mask: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB image + anomaly map scaled by map_range (JET colours) + green ground-truth contour."""
    lo, hi = float(map_range[0]), float(map_range[1])
    norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]  # BGR -> RGB
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, GREEN, max(1, image.shape[0] // 128))
    return out


def _tile(image, amap, mask, score, threshold, map_range, caption) -> np.ndarray:
    tile = cv2.resize(overlay(image, amap, map_range, mask), (TILE, TILE), interpolation=cv2.INTER_AREA)
    verdict = "NG" if score >= threshold else "OK"
    band = np.zeros((34, TILE, 3), np.uint8)
    cv2.putText(band, caption[:28], (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, WHITE, 1, cv2.LINE_AA)
    cv2.putText(band, f"{verdict} {score:.3g}", (4, 29), cv2.FONT_HERSHEY_SIMPLEX, 0.45, RED if verdict == "NG" else GREEN, 1, cv2.LINE_AA)
    return np.vstack([tile, band])


def heatmap_grid(test, scores: np.ndarray, maps: np.ndarray, calibration: dict, path, title: str = "",
                 n_good: int = 4, n_defective: int = 8, columns: int = 6) -> Path:
    """Write a PNG grid: ``n_good`` good then ``n_defective`` defective test images with overlays."""
    labels = np.asarray(test.labels)
    chosen = _evenly_spaced(np.flatnonzero(labels == 0), n_good) + _evenly_spaced(np.flatnonzero(labels == 1), n_defective)
    threshold = float(calibration["threshold"])
    map_range = calibration.get("map_range") or [float(maps.min()), float(maps.max())]
    tiles = []
    for i in chosen:
        mask = test.masks[i] if test.masks is not None else None
        item = test.items[i]
        tiles.append(_tile(test.images[i], maps[i], mask, float(scores[i]), threshold, map_range, f"{item.defect_type}/{item.path.name}"))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)]
    grid = np.vstack(rows)
    header = np.zeros((28, grid.shape[1], 3), np.uint8)
    text = f"{title}   threshold {threshold:.3g}   colour range [{map_range[0]:.3g}, {map_range[1]:.3g}]   green = ground truth"
    cv2.putText(header, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack([header, grid])[:, :, ::-1])
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
    fig.savefig(path)
    plt.close(fig)
    return path
