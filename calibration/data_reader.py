"""onnxruntime CalibrationDataReader over normal images, fed exactly as the runtime feeds frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from protospect._optional import require
from protospect.calibration.augment import AugmentConfig, expand, pseudo_anomalies
from protospect.errors import DataError
from protospect.imageio import IMAGE_SUFFIXES, read_rgb, resize_image

_quant = require("onnxruntime.quantization", extra="runtime")


def images_in(folder: str | Path) -> list[Path]:
    """Sorted image files of a folder; DataError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"calibration folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in calibration folder {folder}")
    return files


def int8_calibration_frames(images, size: int | tuple[int, int], cfg: AugmentConfig, with_anomalies: bool = False) -> list[np.ndarray]:
    """Paths or uint8 RGB arrays -> resized to ``size`` (S, or (H, W); the shared resize) and augmented uint8
    H x W x 3 frames, followed, with ``with_anomalies``, by ``cfg.pseudo_anomalies`` NSA copies of each image."""
    base = [resize_image(read_rgb(i) if isinstance(i, (str, Path)) else i, size) for i in images]
    if not base:
        raise DataError("INT8 calibration needs at least one normal image")
    frames = expand(base, cfg)
    if with_anomalies:
        frames += pseudo_anomalies(base, cfg.pseudo_anomalies, cfg.seed)
    return frames


class Int8CalibrationReader(_quant.CalibrationDataReader):
    """Yields {input_name: uint8 [1, S, S, 3]} once per frame; rewind() starts over."""

    def __init__(self, frames: list[np.ndarray], input_name: str = "image", extra_feed: dict | None = None):
        self.frames = frames
        self.input_name = input_name
        self.extra_feed = extra_feed or {}
        self._pos = 0

    def get_next(self):
        if self._pos >= len(self.frames):
            return None
        frame = self.frames[self._pos]
        self._pos += 1
        return {self.input_name: np.ascontiguousarray(frame[None]), **self.extra_feed}

    def rewind(self):
        self._pos = 0

    def __len__(self):
        return len(self.frames)
