"""Light augmentations of normal images for INT8 calibration.

K shots alone give few activation samples; small shifts, brightness changes and sensor-like noise
widen the observed ranges the way a station's frames vary. No flips or rotations: many parts are
not symmetric, and a flipped part would be an anomaly, not a normal sample.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    per_image: int | None = None  # augmented copies per image (original always kept); None: enough for MIN_FRAMES
    max_shift: float = 0.03       # fraction of each side (of W in x, of H in y)
    brightness: float = 0.10      # multiplicative, 1 +- this
    noise_sigma: float = 2.0      # grey levels
    seed: int = 0
    pseudo_anomalies: int = 4     # NSA copies per image, added only for graphs with an INT8 decoder

    def as_dict(self) -> dict:
        return asdict(self)


def augment(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One augmented copy of a uint8 RGB H x W image (the shift is a fraction of each side)."""
    h, w = image.shape[:2]
    dx, dy = rng.uniform(-cfg.max_shift, cfg.max_shift, size=2) * (w, h)
    shifted = cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    gain = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    noisy = shifted.astype(np.float32) * gain + rng.normal(0.0, cfg.noise_sigma, size=shifted.shape)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


MIN_FRAMES = 32  # measured: 8 frames doubled INT8 score error against 34 frames (docs/export.md)


def copies_per_image(n_images: int, cfg: AugmentConfig) -> int:
    if cfg.per_image is not None:
        return cfg.per_image
    return max(4, -(-MIN_FRAMES // max(n_images, 1)) - 1)


CALIB_NSA_SEED = 8_000_003  # the calibration defects' own stream (training and validation use others)


def pseudo_anomalies(images: list[np.ndarray], per_image: int, seed: int = 0) -> list[np.ndarray]:
    """``per_image`` NSA self-swap copies (training.synthesis, default parameters) of each image:
    normal parts with a pasted patch, so the decoder's calibrated ranges also cover the
    activations a defect produces, not only those of normal parts."""
    from protospect.training.synthesis import make_pseudo_anomaly, nsa_params_for, object_mask

    rng = np.random.default_rng(CALIB_NSA_SEED + seed)
    params = nsa_params_for(None)
    out = []
    for img in images:
        obj = object_mask(img, params)
        for _ in range(per_image):
            made = make_pseudo_anomaly(img, rng, params, obj)
            if made is not None:
                out.append(made[0])
    return out


def expand(images: list[np.ndarray], cfg: AugmentConfig) -> list[np.ndarray]:
    """Each image followed by its augmented copies, deterministic for a given seed."""
    rng = np.random.default_rng(cfg.seed)
    copies = copies_per_image(len(images), cfg)
    out = []
    for img in images:
        out.append(img)
        out.extend(augment(img, rng, cfg) for _ in range(copies))
    return out
