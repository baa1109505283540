"""GenICam pixel formats -> RGB, and a triggered GenICam camera that waits between parts.

The harvesters module is replaced by a small fake with its fetch() / buffer / component surface
(harvesters.core: Component2DImage.data_format, width, height, data; fetch raises
genicam.gentl.TimeoutException when no frame came): no camera or GenTL producer is needed.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from protospect.errors import SourceError
from protospect.runtime.frames import LatestFrameQueue
from protospect.runtime.pixel_formats import genicam_to_rgb
from protospect.runtime.sources import IDLE, CaptureThread, HarvesterSource

H, W = 48, 64
RGB = np.dstack([np.full((H, W), 200), np.tile(np.linspace(0, 250, W), (H, 1)), np.full((H, W), 30)]).astype(np.uint8)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """A raw one-channel Bayer frame: ``pattern`` names the 2x2 cell row by row from the top left (PFNC)."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for (dy, dx), c in zip([(0, 0), (0, 1), (1, 0), (1, 1)], pattern):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(c)]
    return out


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "GBRG", "BGGR"])
@pytest.mark.parametrize("bits", [8, 12])
def test_bayer_frames_demosaic_to_the_right_colours(pattern, bits):
    raw = mosaic(RGB, pattern)
    if bits > 8:
        raw = raw.astype(np.uint16) << (bits - 8)
    rgb = genicam_to_rgb(raw.ravel(), f"Bayer{pattern[0]}{pattern[1]}{bits}", H, W)
    inner = (slice(4, -4), slice(4, -4))  # demosaicing borders are approximate
    # A swapped pattern gives red <-> blue (200 vs 30) or greens off by a column's step.
    assert np.abs(rgb[inner].astype(int) - RGB[inner]).max() <= 8


def test_mono_and_colour_formats():
    gray12 = np.linspace(0, 4095, H * W).astype(np.uint16).reshape(H, W)
    out = genicam_to_rgb(gray12, "Mono12", H, W)
    # 12-bit data kept its range: the old uint16 >> 8 turned 0..4095 into 0..15 (a black frame)
    assert out.shape == (H, W, 3) and out.max() == 255 and (out[..., 0] == (gray12 >> 4)).all()
    assert (genicam_to_rgb(gray12.astype(np.uint8), "Mono8", H, W)[..., 2] == gray12.astype(np.uint8)).all()
    assert (genicam_to_rgb(RGB.ravel(), "RGB8", H, W) == RGB).all()
    assert (genicam_to_rgb(RGB[..., ::-1].ravel(), "BGR8", H, W) == RGB).all()
    rgba = np.dstack([RGB, np.full((H, W), 255, np.uint8)])
    assert (genicam_to_rgb(rgba.ravel(), "RGBa8", H, W) == RGB).all()


@pytest.mark.parametrize("fmt, why", [("YUV422_8", "not supported"), ("Coord3D_ABC32f", "not supported"),
                                      ("RGB10", "8-bit colour")])
def test_unknown_formats_name_the_camera_setting(fmt, why):
    with pytest.raises(SourceError, match=f"{why}.*Mono8"):
        genicam_to_rgb(np.zeros(H * W * 3, np.uint8), fmt, H, W)


def test_buffer_of_the_wrong_size_is_refused():
    with pytest.raises(SourceError, match="holds 100 samples"):
        genicam_to_rgb(np.zeros(100, np.uint8), "Mono8", H, W)


class TimeoutException(Exception):  # the name genicam.gentl gives its fetch timeout
    pass


class FakeAcquirer:
    """Delivers ``script`` items in turn: an array (a frame), 'wait' (fetch times out), 'cable' (transport error)."""

    def __init__(self, script, fmt):
        self.script, self.fmt = list(script), fmt

    def start(self):
        pass

    def stop(self):
        pass

    def destroy(self):
        pass

    def fetch(self, timeout):
        item = self.script.pop(0) if self.script else "wait"
        if isinstance(item, str):
            raise TimeoutException("no buffer") if item == "wait" else RuntimeError("GenTL transport error")
        comp = types.SimpleNamespace(data=item.ravel(), data_format=self.fmt, width=W, height=H)
        buf = types.SimpleNamespace(payload=types.SimpleNamespace(components=[comp]))
        return _Ctx(buf)


class _Ctx:
    def __init__(self, buf):
        self.buf = buf

    def __enter__(self):
        return self.buf

    def __exit__(self, *exc):
        self.buf.payload.components[0].data = None  # re-queued: the camera owns the memory again


def fake_harvesters(monkeypatch, acquirer, opened):
    class Harvester:
        device_info_list = ["cam0"]

        def add_file(self, path):
            pass

        def update(self):
            pass

        def create(self, index):
            opened.append(index)
            return acquirer

        def reset(self):
            pass

    core = types.ModuleType("harvesters.core")
    core.Harvester = Harvester
    pkg = types.ModuleType("harvesters")
    pkg.core = core
    monkeypatch.setitem(sys.modules, "harvesters", pkg)
    monkeypatch.setitem(sys.modules, "harvesters.core", core)


def test_triggered_camera_waits_between_parts_without_reconnecting(tmp_path, monkeypatch):
    cti = tmp_path / "vendor.cti"
    cti.write_bytes(b"producer")
    raw = mosaic(RGB, "RGGB")
    script = ["wait", raw, "wait", "wait", "wait", raw, "cable", raw]
    opened: list = []
    acquirer = FakeAcquirer(script, "BayerRG8")
    fake_harvesters(monkeypatch, acquirer, opened)
    src = HarvesterSource(str(cti), timeout_s=0.01)
    src.open()
    assert src.read() is IDLE  # a fetch timeout is a quiet line, not a lost camera
    frame = src.read()
    assert frame.shape == (H, W, 3) and abs(int(frame[10, 10, 0]) - 200) <= 8  # RGB, copied before re-queue
    queue = LatestFrameQueue(8, "block")
    thread = CaptureThread(src, queue, backoff_s=0.001, max_reconnect_attempts=2)
    thread.start()
    got = [queue.get(timeout=2) for _ in range(2)]
    thread.stop()
    thread.join(2)
    assert [f.seq for f in got] == [0, 1]
    assert thread.reconnects == 1 and opened == [0, 0]  # only the transport error reconnected
