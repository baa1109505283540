"""GenICam (PFNC) pixel formats -> uint8 RGB, for industrial cameras read through harvesters.

harvesters hands over the buffer as numpy in the camera's own pixel format: Mono10/12 arrive as
uint16 holding 0..1023 / 0..4095 (packed variants already unpacked), Bayer formats as the raw
one-channel mosaic. Treated as plain 8-bit or 16-bit gray they give a black or a checkered frame
that the model scores without complaint, so every format is converted here by name, and a format
we do not know is refused with the camera setting to change.
"""
from __future__ import annotations

import re

import cv2
import numpy as np

from protospect.errors import SourceError

# PFNC names the 2x2 cell from its top-left pixel (BayerRG: R G / G B). OpenCV's legacy codes name
# it from the second row's middle pixels, so RG in PFNC is BG in OpenCV; these codes exist in every
# OpenCV 3/4/5 (the explicit COLOR_BayerRGGB2RGB aliases only in recent builds).
_BAYER_TO_RGB = {"RG": cv2.COLOR_BayerBG2RGB, "GR": cv2.COLOR_BayerGB2RGB,
                 "GB": cv2.COLOR_BayerGR2RGB, "BG": cv2.COLOR_BayerRG2RGB}
_PATTERN = re.compile(r"^(Mono|Bayer(RG|GR|GB|BG)|RGB|BGR|RGBa|BGRa)(8|10|12|14|16)(p|Packed)?$")

SUPPORTED = "Mono8..16, BayerRG/GR/GB/BG 8..16, RGB8, BGR8, RGBa8, BGRa8"


def to_8bit(data: np.ndarray, bits: int) -> np.ndarray:
    """Scale an N-bit sample (stored in uint8 or uint16) to 8 bits by dropping the low bits."""
    if bits == 8:
        return data.astype(np.uint8, copy=False)
    return (data.astype(np.uint16, copy=False) >> (bits - 8)).astype(np.uint8)


def genicam_to_rgb(data: np.ndarray, pixel_format: str, height: int, width: int) -> np.ndarray:
    """The camera buffer ``data`` (flat or shaped) in ``pixel_format`` -> contiguous uint8 RGB HxWx3."""
    m = _PATTERN.match(pixel_format or "")
    if m is None:
        raise SourceError(f"camera pixel format {pixel_format!r} is not supported; set the camera's "
                          f"PixelFormat to one of: {SUPPORTED}")
    family, bayer, bits = m.group(1), m.group(2), int(m.group(3))
    if family in ("RGB", "BGR", "RGBa", "BGRa") and bits != 8:
        raise SourceError(f"camera pixel format {pixel_format!r} is not supported; use an 8-bit colour "
                          f"format ({SUPPORTED})")
    channels = {"RGBa": 4, "BGRa": 4, "RGB": 3, "BGR": 3}.get(family, 1)
    expected = height * width * channels
    if data.size != expected:
        raise SourceError(f"camera buffer holds {data.size} samples, {pixel_format} {width}x{height} needs "
                          f"{expected} (line padding or a mid-stream format change)")
    img = to_8bit(np.asarray(data).reshape((height, width) if channels == 1 else (height, width, channels)), bits)
    if family == "Mono":
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if bayer:
        return cv2.cvtColor(img, _BAYER_TO_RGB[bayer])
    if family == "BGR":
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if family == "BGRa":
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if family == "RGBa":
        return cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    return np.ascontiguousarray(img)
