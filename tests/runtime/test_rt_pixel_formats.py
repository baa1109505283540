"""GenICam pixel formats -> RGB, a triggered GenICam camera that waits between parts, and serve --trigger
hardware (TriggerMode=On, TriggerSource set before acquisition starts; every delivered frame judged).

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

    def __init__(self, script, fmt, sources=("Line0", "Line1", "Software")):
        self.script, self.fmt = list(script), fmt
        self.started, self.log = False, []
        self.remote_device = types.SimpleNamespace(node_map=FakeNodeMap(self, sources))

    def start(self):
        self.started = True

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


class FakeNode:
    def __init__(self, acquirer, feature, allowed):
        self.acquirer, self.feature, self.allowed, self._value = acquirer, feature, allowed, None

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        if self.acquirer.started:
            raise RuntimeError("AccessException: node is not writable while acquiring")
        if value not in self.allowed:
            raise ValueError(f"InvalidArgumentException: {value} is not an entry of {self.feature}\nmore detail")
        self._value = value
        self.acquirer.log.append((self.feature, value))


class FakeNodeMap:
    def __init__(self, acquirer, sources):
        self.TriggerSelector = FakeNode(acquirer, "TriggerSelector", ("FrameStart", "AcquisitionStart"))
        self.TriggerMode = FakeNode(acquirer, "TriggerMode", ("On", "Off"))
        self.TriggerSource = FakeNode(acquirer, "TriggerSource", sources)


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


def test_hardware_trigger_set_before_acquisition_and_refusals(tmp_path, monkeypatch):
    cti = tmp_path / "vendor.cti"
    cti.write_bytes(b"producer")
    acquirer = FakeAcquirer([], "RGB8")
    fake_harvesters(monkeypatch, acquirer, [])
    src = HarvesterSource(str(cti), trigger_source="Line1")
    src.open()
    assert acquirer.started and acquirer.log == [("TriggerSelector", "FrameStart"), ("TriggerMode", "On"),
                                                 ("TriggerSource", "Line1")]
    src.close()
    bad = FakeAcquirer([], "RGB8", sources=("Line0",))
    fake_harvesters(monkeypatch, bad, [])
    with pytest.raises(SourceError) as err:
        HarvesterSource(str(cti), trigger_source="Line3").open()
    assert "cannot set TriggerSource=Line3" in str(err.value) and "\n" not in str(err.value) and not bad.started
    plain = FakeAcquirer([], "RGB8")
    del plain.remote_device.node_map.TriggerMode
    fake_harvesters(monkeypatch, plain, [])
    with pytest.raises(SourceError, match="no TriggerMode feature"):
        HarvesterSource(str(cti), trigger_source="Line0").open()
    free = FakeAcquirer([], "RGB8")
    fake_harvesters(monkeypatch, free, [])
    HarvesterSource(str(cti)).open()  # no --trigger hardware: the camera's trigger settings are left alone
    assert free.log == [] and free.started


def test_serve_trigger_hardware_judges_every_delivered_frame(fx, tmp_path, monkeypatch, capsys):
    import json

    from protospect.cli import main

    cti = tmp_path / "vendor.cti"
    cti.write_bytes(b"producer")
    n = 6
    frame = RGB.copy()
    script = []
    for _ in range(n):  # pulses on the line: a frame, then quiet (fetch timeouts) until the next part
        script += [frame, "wait"]
    acquirer = FakeAcquirer(script, "RGB8")
    fake_harvesters(monkeypatch, acquirer, [])
    sink = tmp_path / "out"
    code = main(["serve", str(fx.model), "--source", f"genicam:{cti}", "--sink", str(sink), "--trigger", "hardware",
                 "--trigger-source", "Line1", "--max-frames", str(n), "--drift-window", "0", "--queue-size", "1"])
    assert code == 0, capsys.readouterr().err
    assert ("TriggerMode", "On") in acquirer.log and ("TriggerSource", "Line1") in acquirer.log
    recs = [json.loads(line) for line in (sink / "verdicts.jsonl").read_text().splitlines()]
    assert len(recs) == n and [r["seq"] for r in recs] == list(range(n))  # every delivered frame, none dropped
    # each delivered frame answers one pulse: trigger_seq 1..n, trigger_ms from its arrival on the host
    assert [r["trigger_seq"] for r in recs] == list(range(1, n + 1))
    assert all(r["trigger_ms"] == pytest.approx(r["ms"]["capture_to_verdict"], abs=1e-3) for r in recs)
    summary = json.loads((sink / "summary.json").read_text())
    assert summary["trigger"] == {"mode": "hardware", "trigger_count": n}


@pytest.mark.parametrize("extra, needle", [
    (["--source", "SRC", "--trigger", "hardware"], "--trigger hardware needs a GenICam camera"),
    (["--source", "genicam:/x.cti", "--trigger-source", "Line1"], "add --trigger hardware"),
])
def test_trigger_hardware_flags_one_line(fx, capsys, extra, needle):
    from protospect.cli import main

    extra = [str(fx.video) if a == "SRC" else a for a in extra]
    code = main(["serve", str(fx.model), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and needle in err[0], err
