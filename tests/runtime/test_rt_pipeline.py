"""The pipeline end to end on a generated video: planted defects -> exactly those frames NG, logged and
saved; bad frames rejected with a reason while the loop goes on; a slow model drops frames, bounded."""
from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np

import pytest
from fixture_models import render_part
from wrapped_backend import WrappedBackend

from protospect.errors import SourceError
from protospect.runtime import pipeline as pipeline_mod
from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.frames import LatestFrameQueue
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.sinks import JsonlSink, NgImageSink, Sink
from protospect.runtime.sources import ArraySource, open_source


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_planted_defects_are_exactly_the_ng_frames(fx, tmp_path):
    log_path, ng_dir = tmp_path / "verdicts.jsonl", tmp_path / "ng"
    backend = OrtBackend(fx.model)
    report = Pipeline(backend, open_source(str(fx.video)),
                      [JsonlSink(log_path, fsync_every_n=5), NgImageSink(ng_dir, (0.0, 0.3))]).run()
    recs = _records(log_path)
    assert [r["seq"] for r in recs] == list(range(fx.n_frames))  # replay is lossless
    ng = {r["seq"] for r in recs if r["verdict"] == "NG"}
    assert ng == fx.defect_frames
    assert {p.name for p in ng_dir.glob("*.png")} == {f"ng_{s:08d}.png" for s in fx.defect_frames}
    assert not list(ng_dir.glob("*.part"))
    png = cv2.imread(str(ng_dir / f"ng_{min(fx.defect_frames):08d}.png"))
    assert png.shape == (120, 160, 3)  # saved at the camera's resolution, heatmap resized onto it
    for r in recs:
        assert r["backend"] == "ort" and r["t_capture_ns"] > 0 and r["t_wall"] > 1e9
        assert set(r["ms"]) >= {"wait", "preprocess", "infer", "postprocess", "host_to_host", "capture_to_verdict"}
        assert (r["verdict"] == "NG") == (r["score"] >= fx.threshold)
    c = report["counters"]
    assert (c["processed"], c["ng"], c["ok"], c["dropped"], c["rejected"]) == (fx.n_frames, 4, fx.n_frames - 4, 0, 0)
    assert report["capture_ended"] == "eof"
    assert report["stages"]["host_to_host"]["n"] == fx.n_frames


def test_run_leaves_a_backend_the_caller_opened_open_and_closes_one_it_opened(fx, tmp_path):
    frame = render_part(np.random.default_rng(3), (160, 120))
    backend = OrtBackend(fx.model)
    with backend:
        report = Pipeline(backend, ArraySource([frame], bgr=True), []).run()
        assert report["backend"]["providers"]  # described while open
        amap, _ = backend.infer(np.zeros((64, 64, 3), np.uint8))  # still usable after run()
        assert amap.shape == (64, 64)
    with pytest.raises(RuntimeError, match="outside `with backend:`"):
        backend.infer(np.zeros((64, 64, 3), np.uint8))  # the caller's block closed it
    Pipeline(backend, ArraySource([frame], bgr=True), []).run()  # run() opens and closes it itself
    with pytest.raises(RuntimeError, match="outside `with backend:`"):
        backend.infer(np.zeros((64, 64, 3), np.uint8))


def test_bad_frames_are_rejected_with_reason_and_odd_ones_converted(fx, tmp_path):
    good = render_part(np.random.default_rng(5), (160, 120))
    bgra = cv2.cvtColor(good, cv2.COLOR_BGR2BGRA)
    nan = good.astype(np.float32) / 255
    nan[0, 0, 0] = np.nan
    frames = [
        good,                                         # 0 ok
        np.empty((0,), np.uint8),                     # 1 empty (an undecodable file in folder replay)
        cv2.cvtColor(good, cv2.COLOR_BGR2GRAY),       # 2 gray -> converted
        good.astype(np.uint16) << 8,                  # 3 16-bit -> converted, same pixels as 0
        good.astype(np.int32),                        # 4 unsupported dtype
        bgra,                                         # 5 4-channel -> converted, same pixels as 0
        np.zeros((120, 160, 5), np.uint8),            # 6 five channels
        nan,                                          # 7 NaN
        cv2.resize(good, (320, 240)),                 # 8 another size -> resized
        np.arange(100, dtype=np.uint8),               # 9 a vector
    ]
    log_path = tmp_path / "log.jsonl"
    report = Pipeline(OrtBackend(fx.model), ArraySource(frames, bgr=True), [JsonlSink(log_path)]).run()
    recs = {r["seq"]: r for r in _records(log_path)}
    assert sorted(recs) == list(range(10))
    rejected = {s for s, r in recs.items() if r["verdict"] == "REJECTED"}
    assert rejected == {1, 4, 6, 7, 9}
    assert "empty" in recs[1]["reason"] and "int32" in recs[4]["reason"]
    assert "(120, 160, 5)" in recs[6]["reason"] and "NaN" in recs[7]["reason"]
    assert recs[3]["score"] == recs[0]["score"] == recs[5]["score"]
    # the same good part, in gray and at twice the size: converted and resized, and still a good part
    assert recs[0]["verdict"] == recs[2]["verdict"] == recs[8]["verdict"] == "OK"
    c = report["counters"]
    assert c["processed"] == 5 and c["rejected"] == 5 and len(c["rejected_reasons"]) == 5


class SlowBackend(WrappedBackend):
    """Sleeps in infer(): a model slower than the camera."""

    name = "slow"

    def __init__(self, inner, delay_s):
        super().__init__(inner)
        self.delay_s = delay_s

    def infer(self, img):
        time.sleep(self.delay_s)
        return self.inner.infer(img)


class LiveArraySource(ArraySource):
    """A camera at ~500 frames/s: live, so the pipeline keeps only the newest frames."""

    live = True

    def read(self):
        time.sleep(0.002)
        return super().read()


def test_slow_model_drops_oldest_frames_and_queue_stays_bounded(fx):
    frame = render_part(np.random.default_rng(2), (160, 120))
    depths = []
    pipeline = Pipeline(SlowBackend(OrtBackend(fx.model), 0.03), LiveArraySource([frame], loop=True, bgr=True), [],
                        queue_size=2, max_frames=8, on_frame=lambda r: depths.append((r.seq, len(pipeline.queue))))
    report = pipeline.run()
    assert pipeline.queue.policy == "latest"
    assert report["counters"]["processed"] == 8
    assert report["counters"]["dropped"] > 0
    assert max(d for _, d in depths) <= 2
    seqs = [s for s, _ in depths]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] > 7  # frames were skipped, never reordered
    assert pipeline.capture.frames_read >= report["counters"]["processed"] + report["counters"]["dropped"]


def test_preprocess_fast_path_gives_the_contract_pixels():
    from protospect.imageio import resize_image, to_rgb_uint8
    from protospect.runtime.frames import stamp
    from protospect.runtime.preprocess import preprocess

    rng = np.random.default_rng(4)
    for h, w in [(480, 640), (120, 160), (40, 30), (256, 256)]:  # shrink, grow, and identity
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        model_in, full = preprocess(stamp(0, bgr, bgr=True), 64)
        assert np.array_equal(model_in, resize_image(to_rgb_uint8(bgr, bgr=True), 64))
        assert np.array_equal(full(), to_rgb_uint8(bgr, bgr=True))
        rgb_in, _ = preprocess(stamp(0, bgr, bgr=False), 64)  # an RGB source is not swapped
        assert np.array_equal(rgb_in, resize_image(bgr, 64))


class LateQueue(LatestFrameQueue):
    """The end-of-stream race, made certain: the first get() times out just before the last frame is put
    and the queue closed behind it."""

    first = True

    def get(self, timeout=None):
        if self.first:
            self.first = False
            t0 = time.monotonic()
            while not self.closed and time.monotonic() - t0 < 5:
                time.sleep(0.001)
            return None
        return super().get(timeout)


def test_a_frame_put_just_before_the_queue_closes_is_still_processed(fx, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_mod, "LatestFrameQueue", LateQueue)
    frame = render_part(np.random.default_rng(1), (160, 120))
    report = Pipeline(OrtBackend(fx.model), ArraySource([frame], bgr=True), [JsonlSink(tmp_path / "log.jsonl")]).run()
    assert report["counters"]["processed"] == 1
    assert [r["seq"] for r in _records(tmp_path / "log.jsonl")] == [0]


class HeldSource(ArraySource):
    """Gives its frames, then nothing (the line is idle) until released, then ends."""

    def __init__(self, frames):
        super().__init__(frames, bgr=True)
        self.release = threading.Event()

    def read(self):
        img = super().read()
        if img is None:
            while not self.release.wait(0.01):
                pass
        return img


class TickSink(Sink):
    def __init__(self):
        self.ticks = 0

    def tick(self):
        self.ticks += 1


def test_idle_loop_fsyncs_lines_written_before_the_line_went_quiet(fx, tmp_path, monkeypatch):
    from protospect.runtime import sinks

    real_fsync, synced = sinks.os.fsync, []
    log_sink = JsonlSink(tmp_path / "log.jsonl", fsync_every_n=100, fsync_every_s=0.3)

    def fsync(fd):
        synced.append((log_sink.lines, source.release.is_set()))
        real_fsync(fd)

    monkeypatch.setattr(sinks.os, "fsync", fsync)
    frame = render_part(np.random.default_rng(1), (160, 120))
    source, ticker = HeldSource([frame] * 3), TickSink()
    runner = threading.Thread(target=Pipeline(OrtBackend(fx.model), source, [log_sink, ticker]).run)
    runner.start()
    try:
        t0 = time.monotonic()
        while (3, False) not in synced and time.monotonic() - t0 < 10:
            time.sleep(0.02)
    finally:
        source.release.set()
        runner.join(10)
    assert (3, False) in synced  # all three lines on disk while the loop waited, not only at close
    assert ticker.ticks > 0


def test_sinks_are_closed_when_the_source_cannot_open(fx, tmp_path):
    log_sink = JsonlSink(tmp_path / "log.jsonl")
    with pytest.raises(SourceError):
        Pipeline(OrtBackend(fx.model), ArraySource([]), [log_sink]).run()
    assert log_sink._fd == -1  # closed (fsynced and its descriptor released)
