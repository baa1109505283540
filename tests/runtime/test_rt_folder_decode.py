"""A folder source with a file whose PNG header declares a huge image (or a bad chunk CRC): the frame is rejected,
the source goes on; before, cv2.imdecode's cv2.error killed the source thread with a traceback (issue 20)."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

from protospect.runtime.sources import open_source


def test_undecodable_files_are_empty_frames_not_a_dead_source(tmp_path, capfd):
    ok, png = cv2.imencode(".png", np.full((16, 16, 3), 80, np.uint8))
    good = png.tobytes()
    huge = bytearray(good)
    huge[16:24] = struct.pack(">II", 200_000, 200_000)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    crc = bytearray(good)
    crc[20] ^= 1
    (tmp_path / "a.png").write_bytes(good)
    (tmp_path / "b.png").write_bytes(bytes(huge))
    (tmp_path / "c.png").write_bytes(bytes(crc))
    (tmp_path / "d.png").write_bytes(good)
    src = open_source(str(tmp_path))
    src.open()
    sizes = [src.read().size for _ in range(4)]
    assert sizes[0] > 0 and sizes[1] == 0 and sizes[2] == 0 and sizes[3] > 0
    assert "libpng" not in capfd.readouterr().err
