"""DRAEM-style pseudo anomalies: a Perlin-noise mask filled with a texture from a folder.

Used by PRN when ``textures`` is set (``--textures DIR``). The default is NSA self-swap
(training/synthesis.py), which needs no texture set; a texture set such as DTD is research-only
and is never shipped.

Two defects of the PRNet code are fixed here (docs/methods.md):
* P1: the blend ``I*(1-M) + (1-beta)*T*M + beta*I*M`` is computed with image *and* texture in
  [0, 1]; PRNet mixed a 0-255 image with a /255 texture, so the texture vanished.
* P10: textures are decoded as RGB (imageio.read_rgb), like the images.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from protospect.errors import DataError
from protospect.imageio import IMAGE_SUFFIXES, read_rgb, resize_image

TEXTURE_SUFFIXES = IMAGE_SUFFIXES


# ---------------------------------------------------------------- Perlin mask

def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise_2d(size: int, res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient noise on a size x size grid with res[0] x res[1] cells (DRAEM's rand_perlin_2d_np).

    ``size`` need not be a multiple of res: the noise is computed on the next multiple and cropped.
    """
    ry, rx = res
    h = -(-size // ry) * ry
    w = -(-size // rx) * rx
    dy, dx = h // ry, w // rx
    angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    yy, xx = np.meshgrid(np.arange(h) / dy, np.arange(w) / dx, indexing="ij")
    iy, ix = yy.astype(int), xx.astype(int)
    fy, fx = yy - iy, xx - ix

    def dot(oy: int, ox: int) -> np.ndarray:
        g = grads[iy + oy, ix + ox]
        return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

    uy, ux = _fade(fy), _fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bottom = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    noise = np.sqrt(2) * (top * (1 - uy) + bottom * uy)
    return noise[:size, :size]


def perlin_mask(size: int, rng: np.random.Generator, threshold: float = 0.5, max_tries: int = 20) -> np.ndarray:
    """Binary float32 (size, size) blob mask: Perlin noise at scales 2^U{0..5}, rotated, thresholded.

    Retries until the mask is non-empty (DRAEM's no-anomaly branch is not wanted here: every pseudo
    sample is meant to be anomalous, the normal samples come from the shots).
    """
    for _ in range(max_tries):
        res = (2 ** int(rng.integers(0, 6)), 2 ** int(rng.integers(0, 6)))
        noise = perlin_noise_2d(size, res, rng).astype(np.float32)
        noise = _rotate(noise, float(rng.uniform(-90, 90)), border=cv2.BORDER_REFLECT)
        mask = (noise > threshold).astype(np.float32)
        if mask.any():
            return mask
    # Pathological draws only: fall back to a centred ellipse so the caller always gets an anomaly.
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (size // 2, size // 2), (max(1, size // 8), max(1, size // 12)), 0, 0, 360, 1.0, -1)
    return mask


def _rotate(img: np.ndarray, degrees: float, border: int) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)


# ---------------------------------------------------------------- texture augmentation

def _gamma(t, rng):
    gamma = rng.uniform(0.5, 2.0, size=3)
    return np.clip(255.0 * (t / 255.0) ** gamma, 0, 255)


def _brightness(t, rng):
    return np.clip(t * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30), 0, 255)


def _sharpen(t, rng):
    blur = cv2.GaussianBlur(t, (0, 0), 1.0)
    return np.clip(t + rng.uniform(0.5, 1.5) * (t - blur), 0, 255)


def _hue_saturation(t, rng):
    hsv = cv2.cvtColor(t.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-25, 25)) % 180  # OpenCV hue is 0..180, so +-50 degrees
    hsv[..., 1] = np.clip(hsv[..., 1] + rng.uniform(-50, 50), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)


def _solarize(t, rng):
    thr = rng.uniform(32, 128)
    return np.where(t >= thr, 255 - t, t) if rng.random() < 0.5 else t


def _posterize(t, rng):
    bits = int(rng.integers(4, 9))
    shift = 8 - bits
    return ((t.astype(np.uint8) >> shift) << shift).astype(np.float32)


def _invert(t, rng):
    return 255 - t


def _autocontrast(t, rng):
    lo = t.min(axis=(0, 1), keepdims=True)
    hi = t.max(axis=(0, 1), keepdims=True)
    return (t - lo) * (255.0 / np.maximum(hi - lo, 1))


def _equalize(t, rng):
    u8 = t.astype(np.uint8)
    return np.stack([cv2.equalizeHist(np.ascontiguousarray(u8[..., c])) for c in range(3)], -1).astype(np.float32)


def _affine_rotate(t, rng):
    return _rotate(t, float(rng.uniform(-45, 45)), border=cv2.BORDER_REFLECT)


# The ten ops of DRAEM/PRNet's imgaug list, re-done in numpy/OpenCV (no imgaug dependency).
TEXTURE_AUGMENTERS = (_gamma, _brightness, _sharpen, _hue_saturation, _solarize,
                      _posterize, _invert, _autocontrast, _equalize, _affine_rotate)


def augment_texture(texture: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply ``n_ops`` distinct random ops from TEXTURE_AUGMENTERS to a uint8 RGB texture."""
    t = texture.astype(np.float32)
    for idx in rng.choice(len(TEXTURE_AUGMENTERS), size=n_ops, replace=False):
        t = TEXTURE_AUGMENTERS[idx](t, rng)
    return np.clip(t + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- blend

def draem_blend(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """``I*(1-M) + (1-beta)*T*M + beta*I*M`` with I and T both in [0, 1] (fixes P1); uint8 out.

    image, texture: uint8 RGB (H, W, 3) of the same size; mask: (H, W) in {0, 1}; beta in [0, 1).
    """
    if image.shape != texture.shape:
        raise ValueError(f"image {image.shape} and texture {texture.shape} differ")
    i = image.astype(np.float32) / 255.0
    t = texture.astype(np.float32) / 255.0
    m = mask.astype(np.float32)[..., None]
    out = i * (1 - m) + (1 - beta) * t * m + beta * i * m
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the synthesiser

class TextureFolder:
    """The image files of a texture folder (searched recursively), decoded to RGB on demand."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"texture folder not found: {self.folder} (pass a folder of texture images, e.g. DTD)")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in TEXTURE_SUFFIXES)
        if not self.files:
            raise DataError(f"no images ({', '.join(sorted(TEXTURE_SUFFIXES))}) under texture folder {self.folder}")
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, size: int | tuple[int, int]) -> np.ndarray:
        key = (index, size)
        if key not in self._cache:
            self._cache[key] = resize_image(read_rgb(self.files[index]), size)  # RGB: fixes P10
        return self._cache[key]


class DraemSynthesizer:
    """Perlin-mask + texture pseudo anomalies, as PRN's "unseen" anomalies (DRAEM recipe, P1/P10 fixed).

    ``synth(image_u8, rng) -> (image_u8, mask_float32)``; the mask is the label.
    """

    def __init__(self, textures: str | Path | TextureFolder, beta_max: float = 0.8, rotate_prob: float = 0.0):
        # rotate_prob: PRNet rotates the whole image with p=0.3 before blending. Off by default: for
        # orientation-sensitive parts (a rotated transistor *is* a defect) it would teach the wrong label.
        self.textures = textures if isinstance(textures, TextureFolder) else TextureFolder(textures)
        self.beta_max = beta_max
        self.rotate_prob = rotate_prob

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        if rng.random() < self.rotate_prob:
            image = _rotate(image, float(rng.uniform(-90, 90)), border=cv2.BORDER_REFLECT)
        # a non-square image (aspect=keep) takes the top-left h x w of a square noise field: same blob scale
        mask = perlin_mask(max(h, w), rng)[:h, :w]
        texture = augment_texture(self.textures.load(int(rng.integers(len(self.textures))), (h, w)), rng)
        beta = float(rng.uniform(0.0, self.beta_max))
        return draem_blend(image, texture, mask, beta), mask
