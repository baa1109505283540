"""Frame -> model input: the shared conversion and resize (protospect.imageio), or a rejection reason.

Gray, 16-bit, float and 4-channel frames are converted; frames of any size are resized to the model's
H x W (S x S for a square model) with the same function training used. Anything else (empty, wrong rank, NaN, unknown dtype) is
rejected: the caller counts the reason and goes on with the next frame.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from protospect.errors import DataError
from protospect.imageio import resize_image, to_rgb_uint8
from protospect.runtime.frames import Frame


class FrameRejected(Exception):
    """A frame that cannot become a model input; ``reason`` is short and stable enough to count by."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def preprocess(frame: Frame, size: int | tuple[int, int]) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
    """(model input uint8 H x W x 3 RGB, a function giving the full-resolution RGB frame) or FrameRejected.

    ``size``: the model input, (H, W) (ModelInfo.input_hw) or an int S for S x S (imageio.hw_of).

    The full-resolution frame is only needed by the visual sinks (NG images, live page), so it is
    converted on demand. The common camera case, uint8 BGR, takes a fast path: resize first, then
    swap channels with cvtColor. Resizing works per channel, so the pixels are identical to
    resize_image(to_rgb_uint8(frame)) (tested) at a fraction of the cost.
    """
    img = frame.image
    if isinstance(img, np.ndarray) and img.dtype.kind == "f" and img.size and not np.isfinite(img).all():
        raise FrameRejected("frame has NaN or infinite values")
    if frame.bgr and isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.size:
        model_in = cv2.cvtColor(resize_image(img, size), cv2.COLOR_BGR2RGB)
        return model_in, lambda: cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    try:
        rgb = to_rgb_uint8(img, bgr=frame.bgr)
    except DataError as err:
        raise FrameRejected(str(err)) from err
    return resize_image(rgb, size), lambda: rgb
