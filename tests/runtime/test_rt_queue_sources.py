"""Latest-frame queue, source dispatch, folder replay, and camera reconnect with an injected fake capture."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from protospect.errors import SourceError
from protospect.runtime.frames import LatestFrameQueue, stamp
from protospect.runtime.sources import (CaptureThread, FolderSource, HarvesterSource, VideoCaptureSource,
                                        default_queue_policy, open_source)


def _frames(n):
    return [stamp(i, np.zeros((2, 2, 3), np.uint8)) for i in range(n)]


def test_latest_queue_keeps_newest_and_counts_drops():
    q = LatestFrameQueue(maxsize=3, policy="latest")
    for f in _frames(10):
        assert q.put(f)
        assert len(q) <= 3
    assert q.dropped == 7
    assert [q.get(timeout=0).seq for _ in range(3)] == [7, 8, 9]
    assert q.get(timeout=0.01) is None


def test_block_queue_is_lossless_and_close_wakes_producer():
    q = LatestFrameQueue(maxsize=2, policy="block")
    produced = []

    def producer():
        for f in _frames(5):
            if not q.put(f):
                break
            produced.append(f.seq)

    t = threading.Thread(target=producer)
    t.start()
    got = [q.get(timeout=2).seq for _ in range(5)]
    t.join(2)
    assert got == [0, 1, 2, 3, 4] and q.dropped == 0
    blocked = threading.Thread(target=lambda: [q.put(f) for f in _frames(5)])
    blocked.start()
    time.sleep(0.05)
    assert len(q) == 2  # the producer waits instead of growing the queue
    q.close()
    blocked.join(2)
    assert not blocked.is_alive()


def test_open_source_dispatch(tmp_path):
    assert isinstance(open_source("0"), VideoCaptureSource) and open_source("0").kind == "camera"
    assert open_source("rtsp://10.0.0.5/stream1").kind == "stream"
    gst = "nvarguscamerasrc sensor-id=0 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink drop=1 max-buffers=1"
    assert open_source(gst).kind == "gstreamer" and open_source(gst).live
    assert isinstance(open_source("genicam:/opt/vendor.cti#2"), HarvesterSource)
    assert open_source("genicam:/opt/vendor.cti#2").index == 2
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 8, 3), i, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = open_source(str(tmp_path))
    assert isinstance(folder, FolderSource) and len(folder.files) == 3
    assert len(open_source(str(tmp_path / "f[01].png")).files) == 2
    assert default_queue_policy(folder) == "block" and default_queue_policy(open_source("0")) == "latest"
    with pytest.raises(SourceError, match="source not found"):
        open_source(str(tmp_path / "missing.avi"))
    with pytest.raises(SourceError, match="scheme"):
        open_source("ftp://host/file")
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path / "*.jpg")).open()


def test_folder_replay_order_and_loop(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img_{i}.png"), np.full((4, 4), 10 * i, np.uint8))
    src = open_source(str(tmp_path), loop=True)
    src.open()
    values = [int(src.read()[0, 0]) for _ in range(7)]
    assert values == [0, 10, 20, 0, 10, 20, 0]
    once = open_source(str(tmp_path))
    once.open()
    assert [once.read() is not None for _ in range(4)] == [True, True, True, False]


def test_video_file_that_cannot_be_decoded_is_a_source_error(tmp_path):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SourceError, match="cannot open"):
        open_source(str(bad)).open()


class FakeCapture:
    """cv2.VideoCapture stand-in: delivers ``frames`` frames then fails (a camera unplugged)."""

    def __init__(self, opened: bool, frames: int):
        self.opened, self.left = opened, frames

    def isOpened(self):
        return self.opened

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.full((6, 8, 3), 100, np.uint8)

    def release(self):
        self.opened = False


def test_camera_lost_reconnects_with_backoff_and_keeps_sequence():
    # open ok (3 frames) -> lost -> reopen fails twice -> reopen ok (4 frames) -> lost -> reopen ok (5 frames) ...
    plan = [(True, 3), (False, 0), (False, 0), (True, 4), (True, 5), (False, 0)]
    calls = []

    def factory(target, api):
        opened, frames = plan[min(len(calls), len(plan) - 1)]
        calls.append(time.monotonic())
        return FakeCapture(opened, frames)

    src = open_source("0", capture_factory=factory)
    src.open()
    q = LatestFrameQueue(maxsize=64, policy="block")
    cap = CaptureThread(src, q, backoff_s=0.01, backoff_max_s=0.04, max_reconnect_attempts=3)
    cap.start()
    seqs = []
    while True:
        f = q.get(timeout=5)
        if f is None:
            break
        seqs.append(f.seq)
    cap.join(5)
    assert seqs == list(range(12))  # 3 + 4 + 5 frames, numbering continues across reconnects
    assert cap.reconnects == 2
    assert cap.reconnect_attempts == 3 + 1 + 3  # 2 failed + 1 ok, 1 ok, then 3 failed before giving up
    assert cap.ended.startswith("gave up")
    # back-off doubles: 0.01 s before the 1st retry, 0.02 s before the 2nd, 0.04 s before the 3rd
    assert calls[2] - calls[1] >= 0.02 and calls[3] - calls[2] >= 0.04


def test_camera_that_never_opens_is_a_source_error():
    src = open_source("3", capture_factory=lambda t, api: FakeCapture(False, 0))
    with pytest.raises(SourceError, match="cannot open camera:3"):
        src.open()


def test_camera_that_opens_but_never_delivers_backs_off_and_gives_up():
    calls = []

    def factory(target, api):
        calls.append(time.monotonic())
        return FakeCapture(True, 1 if not calls[:-1] else 0)  # one frame at start, then opens but sends nothing

    src = open_source("0", capture_factory=factory)
    src.open()
    q = LatestFrameQueue(maxsize=8, policy="latest")
    cap = CaptureThread(src, q, backoff_s=0.01, backoff_max_s=0.08, max_reconnect_attempts=4)
    cap.start()
    cap.join(5)
    try:
        assert not cap.is_alive(), "retried at the first back-off forever"
        assert cap.ended == "gave up after 4 reconnect attempts"
        assert cap.reconnects == 4 and cap.frames_read == 1
        gaps = np.diff(calls[1:])  # between the re-opens: doubling, though each open "succeeded"
        assert len(gaps) == 3 and gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08
    finally:
        cap.stop()
        cap.join(5)


def test_existing_paths_win_and_file_urls_are_files(tmp_path, monkeypatch, fx):
    monkeypatch.chdir(tmp_path)
    for name in ("20240101", "lot!7"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "a.png"), np.zeros((4, 4, 3), np.uint8))
        for spec in (name, name + "/"):
            src = open_source(spec)
            assert isinstance(src, FolderSource) and len(src.files) == 1, spec
    video = open_source(fx.video.as_uri())  # file:///.../parts.avi
    assert video.kind == "video" and not video.live and default_queue_policy(video) == "block"
    assert open_source("file://localhost" + str(tmp_path / "lot!7")).files == [tmp_path / "lot!7" / "a.png"]
    with pytest.raises(SourceError, match="source not found"):
        open_source((tmp_path / "missing.avi").as_uri())
    # without such a path the other readings still hold
    assert open_source("20240102").kind == "camera"
    assert open_source("rtspsrc location=rtsp://10.0.0.5/s1 ! decodebin ! videoconvert ! appsink").kind == "gstreamer"
    assert open_source("http://10.0.0.5/mjpg").kind == "stream"


def test_source_that_raises_ends_capture_with_one_line_and_no_traceback(caplog):
    """An unexpected error in a source's read is one log line (the traceback only at DEBUG, i.e. --verbose)."""
    from protospect.runtime.sources import ArraySource  # noqa: PLC0415

    class Broken(ArraySource):
        def read(self):
            if self._next >= 2:
                raise OSError("USB transfer error")
            return super().read()

    def run(level):
        caplog.clear()
        caplog.set_level(level, logger="protospect.runtime.sources")
        src = Broken([np.zeros((4, 4, 3), np.uint8)] * 5, name="cam0")
        src.open()
        q = LatestFrameQueue(maxsize=8, policy="block")
        t = CaptureThread(src, q)
        t.start()
        t.join(5)
        return t, [r for r in caplog.records if r.levelname == "ERROR"]

    t, errors = run("INFO")
    assert t.frames_read == 2 and t.ended == "error: USB transfer error"
    assert len(errors) == 1 and "cam0" in errors[0].getMessage() and "USB transfer error" in errors[0].getMessage()
    assert errors[0].exc_info is None or errors[0].exc_info is False
    _, errors = run("DEBUG")
    assert errors[0].exc_info and errors[0].exc_info[0] is OSError
