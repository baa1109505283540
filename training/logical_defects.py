"""Planted defects for choosing without test images: *logical* ones: normal content in the wrong place, or missing (docs/decision.md section 14).

NSA and texture blends plant new content (a foreign patch, a texture). Logical anomalies (MVTec LOCO:
a label missing or misplaced, the wrong fill level) contain nothing a good part does not have somewhere,
so a model that matches every patch against every prototype without context can miss them. Two kinds:

  misplace  a rectangle of the part moved by a quarter to a half of the image side, pasted with a
            feathered edge (so the seam is not what gives it away)
  erase     a rectangle of the part filled in from its surroundings (cv2.inpaint): something is missing
  transplant  the same rectangle of another good part pasted in place, feathered: each piece is normal, the
            combination is not (one juice's label on another juice's bottle; rule v11, section 28)
  warp      a band of the part moved along one axis by a smooth bump (no seam, no new content): the proportions
            are wrong, every patch is a slightly stretched normal one (a fill level, a label height; rule v13)

Sizes are fractions of the image side, so a 256 px and a 512 px model see the same defects.
"""
from __future__ import annotations

import cv2
import numpy as np

LOGICAL_SEED = 515151  # the logical kinds' streams (+0 misplace, +1 erase, +2 transplant); nsa_small's started from the same number
SMALL_SEED = 515151  # nsa_small's stream (rule v2's value: kept so every study row stays reproducible)
WARP_SEED = 616161  # warp's own stream: asking for it leaves every other kind's images as they were


def _rect_on_part(rng, shape, obj, lo, hi, tries=50):
    """(y, x, h, w) of a rectangle whose centre lies on the part (anywhere when obj is None)."""
    H, W = shape
    for _ in range(tries):
        h, w = int(H * rng.uniform(lo, hi)), int(W * rng.uniform(lo, hi))
        y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        if obj is None or obj[y + h // 2, x + w // 2]:
            return y, x, h, w
    return None


def _feather(h, w, sigma):
    a = np.zeros((h, w), np.float32)
    m = max(1, int(round(sigma)))
    a[m:h - m, m:w - m] = 1.0
    return cv2.GaussianBlur(a, (0, 0), sigma)[..., None] if sigma > 0 else a[..., None]


def misplace(img: np.ndarray, rng: np.random.Generator, obj: np.ndarray | None = None):
    """(image, mask): a 15-30 % rectangle of the part moved by 25-50 % of the side, feathered in."""
    H, W = img.shape[:2]
    rect = _rect_on_part(rng, (H, W), obj, 0.15, 0.30)
    if rect is None:
        return None
    return _moved(img, rng, obj, *rect)


def _moved(img, rng, obj, y, x, h, w):
    """The rectangle (y, x, h, w) pasted, feathered, 25-50 % of the side away (None when it cannot be placed)."""
    H, W = img.shape[:2]
    for _ in range(50):
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.25, 0.5)
        ty, tx = int(round(y + dist * H * np.sin(ang))), int(round(x + dist * W * np.cos(ang)))
        if 0 <= ty <= H - h and 0 <= tx <= W - w and (obj is None or obj[ty + h // 2, tx + w // 2]):
            break
    else:
        return None
    return _pasted(img, img[y:y + h, x:x + w], ty, tx)


def _pasted(img, patch, y, x):
    """(image, mask): ``patch`` feathered into a copy of ``img`` with its corner at (y, x)."""
    H, W = img.shape[:2]
    h, w = patch.shape[:2]
    out = img.astype(np.float32).copy()
    alpha = _feather(h, w, 0.02 * min(H, W))
    out[y:y + h, x:x + w] = alpha * patch + (1 - alpha) * out[y:y + h, x:x + w]
    mask = np.zeros((H, W), np.uint8)
    mask[y:y + h, x:x + w] = 1  # the whole rectangle: the feathered rim changed pixels too
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


def erase(img: np.ndarray, rng: np.random.Generator, obj: np.ndarray | None = None):
    """(image, mask): a 10-25 % rectangle of the part inpainted from its surroundings (something missing)."""
    rect = _rect_on_part(rng, img.shape[:2], obj, 0.10, 0.25)
    if rect is None:
        return None
    y, x, h, w = rect
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[y:y + h, x:x + w] = 1
    out = cv2.inpaint(np.ascontiguousarray(img), mask, max(3, int(0.02 * min(img.shape[:2]))), cv2.INPAINT_TELEA)
    return out, mask


def transplant(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator, obj: np.ndarray | None = None,
               min_change: float = 5.0, tries: int = 10):
    """(image, mask): a 15-30 % rectangle of ``donor`` (another good image, resized to ``img``'s pixels when they
    differ) pasted at the same place, feathered in. None when no rectangle changes the image by at least
    ``min_change`` grey levels on average (two identical parts make no defect, only noise)."""
    H, W = img.shape[:2]
    if donor.shape[:2] != (H, W):
        donor = cv2.resize(donor, (W, H), interpolation=cv2.INTER_AREA)
    for _ in range(tries):
        rect = _rect_on_part(rng, (H, W), obj, 0.15, 0.30)
        if rect is None:
            return None
        y, x, h, w = rect
        if np.abs(img[y:y + h, x:x + w].astype(np.float32) - donor[y:y + h, x:x + w]).mean() >= min_change:
            return _pasted(img, donor[y:y + h, x:x + w], y, x)
    return None


def warp(img: np.ndarray, rng: np.random.Generator, min_change: float = 5.0, tries: int = 10):
    """(image, mask): content shifted along one axis by a * exp(-(t - c)^2 / 2 s^2), a = 6-12 % of the side (either
    sign), c in the middle half, s = 10-20 % and >= |a| / 0.7, so |slope| <= 0.43 and the remap folds nothing. None when no draw changes the
    moved band by ``min_change`` grey levels on average (a flat or periodic part can hide a shift)."""
    H, W = img.shape[:2]
    for _ in range(tries):
        axis = int(rng.integers(2))
        n = H if axis == 0 else W
        a = rng.uniform(0.06, 0.12) * n * rng.choice((-1.0, 1.0))
        c, s = rng.uniform(0.25, 0.75) * n, rng.uniform(max(0.10, abs(a) / n / 0.7), 0.20) * n
        t = np.arange(n, dtype=np.float32)
        src = t - a * np.exp(-((t - c) ** 2) / (2 * s * s))  # the output pixel t shows the input at src(t)
        src = np.clip(src, 0, n - 1).astype(np.float32)  # at the edge: the edge pixel, never a mirror (a seam)
        ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
        if axis == 0:
            ys = np.repeat(src[:, None], W, 1)
        else:
            xs = np.repeat(src[None, :], H, 0)
        out = cv2.remap(img, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        moved = np.abs(src - t) >= 0.02 * n
        mask = (moved[:, None] if axis == 0 else moved[None, :]) & np.ones((H, W), bool)
        if mask.any() and np.abs(out.astype(np.float32) - img)[mask].mean() >= min_change:
            return out, mask.astype(np.uint8)
    return None


def warp_defects(normals: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rule v13's planted kind ``warp`` on copies of ``normals`` (docs/decision.md section 34)."""
    rng = np.random.default_rng(WARP_SEED)
    return [p for p in (warp(img, rng) for img in normals) if p is not None]


KINDS = {"misplace": misplace, "erase": erase}  # one image each; transplant takes a second (logical_sets)


def small_nsa_defects(normals: list[np.ndarray], category: str | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """NSA self-swap with one patch of half-width 1-3 % of the side (real DeepPCB / MPDD defects are that small;
    the training family's patches average ~13 %): rule v2's planted kind ``nsa_small`` (docs/decision.md)."""
    import dataclasses  # noqa: PLC0415

    from protospect.training.synthesis import make_pseudo_anomaly, nsa_params_for, object_mask  # noqa: PLC0415

    rng = np.random.default_rng(SMALL_SEED)
    params = dataclasses.replace(nsa_params_for(category), width_bounds=((0.01, 0.03), (0.01, 0.03)), num_patches=1)
    out = []
    for img in normals:
        pair = make_pseudo_anomaly(img, rng, params, object_mask(img, params))
        if pair is not None:
            out.append(pair)
    return out


def logical_sets(normals: list[np.ndarray], category: str | None) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{kind: [(image, mask), ...]} planted on copies of ``normals``; one stream per kind, fixed seed."""
    from protospect.training.synthesis import nsa_params_for, object_mask  # noqa: PLC0415

    params = nsa_params_for(category)
    out = {}
    for i, (kind, fn) in enumerate(KINDS.items()):
        rng = np.random.default_rng(LOGICAL_SEED + i)
        pairs = [fn(img, rng, object_mask(img, params)) for img in normals]
        out[kind] = [p for p in pairs if p is not None]
    # the donor is another of the same held-out images, never the image itself (needs two)
    rng = np.random.default_rng(LOGICAL_SEED + len(KINDS))
    pairs = []
    for i, img in enumerate(normals if len(normals) > 1 else []):
        j = (i + 1 + int(rng.integers(len(normals) - 1))) % len(normals)
        pairs.append(transplant(img, normals[j], rng, object_mask(img, params)))
    out["transplant"] = [p for p in pairs if p is not None]
    return out
