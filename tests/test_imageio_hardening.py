"""Image decoding edge cases from issue 20: 12-bit data in 16-bit PNGs, corrupt PNGs that libpng would report
on stderr itself, a header declaring a huge image, and OpenCV's log level."""
from __future__ import annotations

import logging
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

import protospect.imageio as imageio
from protospect.errors import DataError
from protospect.imageio import read_rgb, to_rgb_uint8


def _png(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", img)
    assert ok
    return data.tobytes()


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(imageio, "_warned_low_bits", False)


def test_12_bit_png_keeps_its_range_and_warns_once(tmp_path, caplog, fresh_warning):
    gray12 = np.linspace(0, 4095, 64 * 48).astype(np.uint16).reshape(48, 64)
    path = tmp_path / "twelve.png"
    path.write_bytes(_png(gray12))
    with caplog.at_level(logging.WARNING, logger="protospect.imageio"):
        rgb = read_rgb(path)
        read_rgb(path)
    assert rgb.max() == 255 and (rgb[..., 0] == (gray12 >> 4)).all()  # >> 8 gave 0..15: near-black
    warnings = [r for r in caplog.records if "12-bit" in r.getMessage()]
    assert len(warnings) == 1


def test_full_range_16_bit_keeps_the_top_8_bits(fresh_warning, caplog):
    img = (np.arange(256, dtype=np.uint16).reshape(16, 16) << 8) | 0x7F
    with caplog.at_level(logging.WARNING, logger="protospect.imageio"):
        out = to_rgb_uint8(img)
    assert (out[..., 0] == np.arange(256).reshape(16, 16)).all() and not caplog.records


def _bad_crc_png() -> bytes:
    data = bytearray(_png(np.full((32, 32, 3), 90, np.uint8)))
    data[20] ^= 0x01  # a bit flip inside IHDR's width
    return bytes(data)


def _huge_header_png() -> bytes:
    data = bytearray(_png(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = struct.pack(">II", 200_000, 200_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("make, needle", [
    (_bad_crc_png, "CRC error in chunk 'IHDR'"),
    (lambda: _png(np.zeros((32, 32, 3), np.uint8))[:-30], "cut off"),
    (_huge_header_png, "declares more pixels than OpenCV decodes"),
    (lambda: b"", "empty file"),
])
def test_corrupt_pngs_are_a_data_error_naming_the_reason(tmp_path, make, needle):
    path = tmp_path / "bad.png"
    path.write_bytes(make())
    with pytest.raises(DataError, match=needle):
        read_rgb(path)


def test_nothing_but_our_line_reaches_stderr(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(_bad_crc_png())
    code = ("import os, protospect.imageio as io\n"
            f"try:\n    io.read_rgb({str(bad)!r})\nexcept Exception as e:\n    print('caught', type(e).__name__)\n"
            "print(os.environ['OPENCV_LOG_LEVEL'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["caught", "DataError", "ERROR"] and out.stderr == "", out.stderr
