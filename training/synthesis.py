"""NSA "self-swap" pseudo anomalies: cut a patch out of a good image and paste it elsewhere in it.

Follows algorithms.md section 1.6 (Schlueter et al.'s NSA as configured by PCSNet: same image,
hard swap, random shift, no resize, binary label, tol = 1), with three deliberate changes:

* It runs on the image *at the model resolution* S, after ``resize_image``; the mask is made on
  the same pixels, so image and mask share one geometry (defect D2 of the published code).
* Pixels whose change is too small to survive the label's median filter are put back, so the mask
  contains every changed pixel: a "pseudo anomaly" never hides unlabelled changes.
* An image where no patch could be placed is retried with fresh draws and, failing that, without
  the object mask; if it still did not change, the caller gets ``None`` and must not label it
  anomalous (the published code labelled such unchanged images anomalous).

Every random draw comes from the numpy ``Generator`` passed in, so a seed fixes the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class NSAParams:
    """Per-category NSA settings. Widths are patch *half*-widths as fractions of the image side."""

    width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.03, 0.25), (0.03, 0.25))
    num_patches: int = 2
    background: tuple[float, float] | None = None  # (grey level, threshold) of the published table
    auto_background: bool = False  # estimate the background colour from the border pixels instead
    min_object_pct: float = 0.5
    min_overlap_pct: float = 0.25


def _obj(width, patches, bg, min_obj=0.7):
    return NSAParams(width, patches, bg, False, min_obj, 0.25)


# PCSNet main.py's table for MVTec AD (algorithms.md 1.6). Object classes carry a background.
NSA_TABLE: dict[str, NSAParams] = {
    "bottle": _obj(((0.03, 0.4), (0.03, 0.4)), 1, (200, 60)),
    "cable": _obj(((0.01, 0.05), (0.01, 0.05)), 3, None),
    "capsule": _obj(((0.01, 0.05), (0.01, 0.05)), 1, (200, 60)),
    "hazelnut": _obj(((0.01, 0.05), (0.01, 0.1)), 3, (20, 20)),
    "metal_nut": _obj(((0.05, 0.4), (0.05, 0.4)), 1, (20, 20), 0.5),
    "pill": _obj(((0.01, 0.05), (0.01, 0.1)), 2, (20, 20)),
    "screw": _obj(((0.01, 0.05), (0.01, 0.05)), 1, (200, 60), 0.5),
    "toothbrush": _obj(((0.01, 0.05), (0.01, 0.05)), 3, (20, 20), 0.25),
    "transistor": _obj(((0.03, 0.4), (0.03, 0.4)), 3, None),
    "zipper": _obj(((0.03, 0.4), (0.03, 0.4)), 3, (200, 60)),
    "carpet": _obj(((0.03, 0.4), (0.03, 0.4)), 2, None),
    "grid": _obj(((0.01, 0.05), (0.01, 0.1)), 3, None),
    "leather": _obj(((0.01, 0.05), (0.01, 0.05)), 3, None),
    "tile": _obj(((0.01, 0.05), (0.01, 0.1)), 1, None),
    "wood": _obj(((0.01, 0.05), (0.01, 0.05)), 3, None),
}

# Unknown categories: medium patches, and an object mask only when the border looks like a plain
# background (then patches must land on the object, as for the table's object classes).
DEFAULT_PARAMS = NSAParams(((0.03, 0.25), (0.03, 0.25)), 2, None, True, 0.5, 0.25)

GAMMA = (2.0, 0.05, 0.03)  # (shape, scale, offset) of the half-width draw, as in PCSNet
TOL = 1.0  # mean absolute RGB change that makes a pixel anomalous
MAX_TRIES = 200  # placement attempts per patch (published value)
IMAGE_RETRIES = 5  # fresh draws for an image that came out unchanged


def nsa_params_for(category: str | None) -> NSAParams:
    """Table entry for a known MVTec class, else the defaults for unknown categories."""
    return NSA_TABLE.get((category or "").lower(), DEFAULT_PARAMS)


def object_mask(img: np.ndarray, params: NSAParams) -> np.ndarray | None:
    """uint8 {0,1} HxW mask of the object, or None when the category has no background."""
    mean = img.astype(np.float32).mean(axis=-1)
    if params.background is not None:
        bg, thr = params.background
        mask = (np.abs(mean - bg) > thr).astype(np.uint8)
    elif params.auto_background:
        mask = _auto_object_mask(img)
        if mask is None:
            return None
    else:
        return None
    return cv2.medianBlur(mask, 7)  # remove threshold grain, as NSA does


def _auto_object_mask(img: np.ndarray, band: int = 4) -> np.ndarray | None:
    """Object = pixels far from the border's median colour, if the border is a plain background."""
    f = img.astype(np.float32)
    border = np.concatenate([f[:band].reshape(-1, 3), f[-band:].reshape(-1, 3),
                             f[:, :band].reshape(-1, 3), f[:, -band:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    spread = np.percentile(np.abs(border - bg).mean(axis=1), 90)
    if spread > 12:  # busy border (texture, PCB tracks...): no background to skip
        return None
    thr = max(20.0, 3.0 * spread)
    mask = (np.abs(f - bg).mean(axis=-1) > thr).astype(np.uint8)
    frac = mask.mean()
    return mask if 0.02 < frac < 0.98 else None


def _half_width(rng, side, lo, hi):
    lo_px, hi_px = max(1, round(lo * side)), max(1, round(hi * side))
    shape, scale, offset = GAMMA
    return int(np.clip((offset + rng.gamma(shape, scale)) * side, lo_px, hi_px)), lo_px


def _one_patch(out, src_img, obj, params, rng):
    """Paste one patch of src_img into out (in place). Returns False when it could not be placed."""
    H, W = out.shape[:2]
    (lo1, hi1), (lo2, hi2) = params.width_bounds
    w1, min1 = _half_width(rng, H, lo1, hi1)
    w2, min2 = _half_width(rng, W, lo2, hi2)
    if H - min1 <= min1 or W - min2 <= min2:
        return False
    for _ in range(MAX_TRIES):  # source box
        c1, c2 = rng.integers(min1, H - min1), rng.integers(min2, W - min2)
        a1, b1, a2, b2 = max(c1 - w1, 0), min(c1 + w1, H), max(c2 - w2, 0), min(c2 + w2, W)
        if obj is None or obj[a1:b1, a2:b2].mean() > params.min_object_pct:
            break
    else:
        return False
    src = src_img[a1:b1, a2:b2]
    src_obj = None if obj is None else obj[a1:b1, a2:b2]
    h, w = src.shape[:2]
    if h // 2 + 1 >= H - h // 2 - 1 or w // 2 + 1 >= W - w // 2 - 1:
        return False
    for _ in range(MAX_TRIES):  # destination box (shifted)
        d1 = rng.integers(h // 2 + 1, H - h // 2 - 1) - h // 2
        d2 = rng.integers(w // 2 + 1, W - w // 2 - 1) - w // 2
        if obj is None:
            break
        dest_obj = obj[d1:d1 + h, d2:d2 + w]
        if src_obj.sum() > 0 and (dest_obj & src_obj).sum() / src_obj.sum() > params.min_overlap_pct:
            break
    else:
        return False
    keep = np.ones((h, w), bool) if obj is None else (src_obj | obj[d1:d1 + h, d2:d2 + w]).astype(bool)
    region = out[d1:d1 + h, d2:d2 + w]
    region[keep] = src[keep]
    return True


def _attempt(img, obj, params, rng):
    out = img.copy()
    for i in range(params.num_patches):
        if i == 0 or rng.integers(2) > 0:  # first patch always, each later one with p = 0.5
            _one_patch(out, img, obj, params, rng)
    changed = (np.abs(out.astype(np.int16) - img.astype(np.int16)).mean(axis=-1) > TOL).astype(np.uint8)
    label = cv2.medianBlur(changed, 5)
    out[label == 0] = img[label == 0]  # changes the label drops are put back: mask == changed pixels
    return out, label


def make_pseudo_anomaly(img: np.ndarray, rng: np.random.Generator, params: NSAParams,
                        obj: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """NSA self-swap on a uint8 RGB image at model resolution.

    Returns (image, mask uint8 {0,1} HxW) with every changed pixel inside the mask, or None when
    no visible patch could be made (the caller must then not count the image as anomalous).
    ``obj`` is the object mask (see ``object_mask``); pass it to avoid recomputing it per call.
    """
    for use_obj in ([obj, None] if obj is not None else [None]):
        for _ in range(IMAGE_RETRIES):
            out, label = _attempt(img, use_obj, params, rng)
            if label.any():
                return out, label
    return None
