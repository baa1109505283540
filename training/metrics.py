"""Anomaly-detection metrics on numpy arrays (numpy + scipy only, no torch, no sklearn).

Conventions shared by every function here:
* ``labels`` are 1 for a defective image (positive) and 0 for a good one; higher score = more anomalous.
* The decision rule is "NG when score >= threshold", the same rule the runtime applies.
* Values are fractions in [0, 1]; results.json multiplies them by 100.
* A metric that is undefined for the data (e.g. AUROC with one class only) returns ``nan``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata


def _as_binary(labels) -> np.ndarray:
    y = np.asarray(labels).ravel()
    return (y > 0).astype(np.int8)


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney form of the ROC area: ties between a positive and a negative count one half."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    rank_sum = float(ranks[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def image_auroc(labels, scores) -> float:
    """Area under the image-level ROC curve (equals sklearn's roc_auc_score, ties included)."""
    return _auroc(_as_binary(labels), np.asarray(scores, dtype=np.float64).ravel())


def pixel_auroc(masks, maps) -> float:
    """Area under the ROC curve over every pixel of every image (masks {0,1} and maps of equal shape)."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    return _auroc(_as_binary(masks), maps.astype(np.float64).ravel())


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score in descending order, starting at (0, 0)."""
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    n_pos, n_neg = max(int(y.sum()), 1), max(int(y.size - y.sum()), 1)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def aupro(masks, maps, max_fpr: float = 0.3) -> float:
    """Standard AUPRO: area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr``.

    As in the MVTec AD evaluation code: every connected component (8-connectivity) of every ground
    truth mask is one region. At a threshold t, PRO(t) = mean over all regions of the fraction of
    the region's pixels with map >= t, and FPR(t) = fraction of all defect-free pixels (of every
    image) with map >= t. The curve is evaluated exactly at every distinct map value, integrated by
    the trapezoid rule, linearly interpolated at exactly FPR = max_fpr, and normalised by max_fpr so
    that a perfect map scores 1. Images without defects only contribute to the FPR.
    """
    masks = np.asarray(masks)
    maps = np.asarray(maps)
    if not np.issubdtype(maps.dtype, np.floating):
        maps = maps.astype(np.float64)  # float32 maps stay float32: ties are decided on the model's own values
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    masks = masks > 0
    # Each anomalous pixel carries weight 1 / (n_regions * its region's area), so the running sum of
    # weights above a threshold is exactly the mean per-region overlap at that threshold.
    pro_weight = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    eight = np.ones((3, 3), dtype=bool)
    region_weights = []
    for i in range(masks.shape[0]):
        labelled, n = ndimage.label(masks[i], structure=eight)
        if n == 0:
            continue
        areas = np.bincount(labelled.ravel(), minlength=n + 1).astype(np.float64)
        inv_area = np.zeros(n + 1)
        inv_area[1:] = 1.0 / areas[1:]
        region_weights.append((i, labelled, inv_area))
        n_regions += n
    n_ok = int((~masks).sum())
    if n_regions == 0 or n_ok == 0:
        return float("nan")
    for i, labelled, inv_area in region_weights:
        pro_weight[i] = inv_area[labelled] / n_regions
    del region_weights

    order = np.argsort(maps.ravel(), kind="stable")[::-1]  # descending scores
    s_sorted = maps.ravel()[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    del s_sorted
    # Counting normal pixels in integers keeps FPR exact even over tens of millions of pixels.
    fpr = np.cumsum(~masks.ravel()[order], dtype=np.int64)[last_of_tie] / n_ok
    pro = np.cumsum(pro_weight.ravel()[order])[last_of_tie]
    fpr = np.r_[0.0, fpr]
    pro = np.r_[0.0, pro]
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under a curve with non-decreasing x, cut (with linear interpolation) at x_max."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    if xs[-1] < x_max and keep.sum() < x.size:
        j = int(np.argmax(x > x_max))  # first point past the cut; the one before it is <= x_max
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_cut = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_cut]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def f1_max(labels, scores) -> tuple[float, float]:
    """Best image-level F1 over every threshold, and the threshold that gives it ("NG when >=").

    Only thresholds equal to an observed score are tried (they are the only distinct decisions).
    Ties in F1 keep the highest threshold.
    """
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan"), float("nan")
    fpr, tpr, thr = roc_curve(y, s)
    tp = tpr[1:] * n_pos
    fp = fpr[1:] * (y.size - n_pos)
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[1:][best])


def far_at_full_recall(labels, scores) -> float:
    """False-alarm rate at 100 % recall (the industrial "no escape" operating point).

    The threshold is the highest one that still flags every defective image: the lowest score among
    defective images (NG when score >= threshold). The result is the fraction of GOOD images whose
    score is at or above that threshold, i.e. how many good parts would be rejected to let no
    defect through. 0 is perfect, 1 means every good image is rejected.
    """
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.sum() == 0 or y.sum() == y.size:
        return float("nan")
    threshold = s[y == 1].min()
    return float(np.mean(s[y == 0] >= threshold))


def threshold_stats(labels, scores, threshold: float) -> dict[str, float]:
    """Image-level decision quality at a fixed threshold (NG when score >= threshold).

    f1: F1 of the NG class; escape_rate: fraction of defective images passed as OK;
    false_alarm_rate: fraction of good images flagged NG.
    """
    y = _as_binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    ng = s >= threshold
    tp = int(np.sum(ng & (y == 1)))
    fp = int(np.sum(ng & (y == 0)))
    fn = int(np.sum(~ng & (y == 1)))
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else float("nan"),
        "escape_rate": fn / n_pos if n_pos else float("nan"),
        "false_alarm_rate": fp / n_neg if n_neg else float("nan"),
    }
