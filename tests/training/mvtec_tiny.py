"""A tiny generated MVTec-layout category for tests: striped parts, defects are bright blobs with masks.

Every image is a smooth periodic pattern (slightly jittered per image, so normal images are similar but
not identical); a defect is a bright disc drawn on top, and its mask is that disc.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def part_image(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(-0.3, 0.3)
    base = 0.5 + 0.25 * np.sin(xx / size * 6 * np.pi + phase) * np.cos(yy / size * 4 * np.pi)
    img = np.stack([base * 0.9, base * 0.7, base * 0.5], axis=-1) * 255
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def add_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    r = max(3, size // 10)
    cx, cy = rng.integers(r + 2, size - r - 2, size=2)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(mask, (int(cx), int(cy)), r, 255, -1)
    out = img.copy()
    out[mask > 0] = (250, 40, 200)
    return out, mask


def write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), img[:, :, ::-1] if img.ndim == 3 else img)
    assert ok, path


def make_category(root: Path, name: str = "part", *, n_train: int = 4, n_good: int = 3, n_defect: int = 3,
                  size: int = 64, seed: int = 0) -> Path:
    """Write root/name in MVTec layout and return the category folder."""
    rng = np.random.default_rng(seed)
    cat = Path(root) / name
    for i in range(n_train):
        write(cat / "train" / "good" / f"{i:03d}.png", part_image(rng, size))
    for i in range(n_good):
        write(cat / "test" / "good" / f"{i:03d}.png", part_image(rng, size))
    for i in range(n_defect):
        img, mask = add_defect(part_image(rng, size), rng)
        write(cat / "test" / "blob" / f"{i:03d}.png", img)
        write(cat / "ground_truth" / "blob" / f"{i:03d}_mask.png", mask)
    return cat
