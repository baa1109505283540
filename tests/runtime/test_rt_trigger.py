"""--trigger plc in the pipeline: one fresh frame judged per trigger (captured after it, never a stale queued
one), trigger_seq and trigger_ms in each verdict line; triggers driven programmatically."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
from fixture_models import render_part

from protospect.runtime.backends.ort import OrtBackend
from protospect.runtime.line.handshake import ERR_REJECTED, ERROR, READY, RESULT_READY, Handshake
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.sinks import JsonlSink
from protospect.runtime.sources import ArraySource
from protospect.verdict_record import OPTIONAL_KEYS


class LiveGenerated(ArraySource):
    """A generated camera at ~300 frames/s, forever."""

    live = True

    def read(self):
        time.sleep(0.003)
        return super().read()


def wait_state(hs, states, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        snap = hs.snapshot()
        if snap.state in states:
            return snap
        time.sleep(0.001)
    raise AssertionError(f"state {hs.state}, wanted {states}")


def drive(hs, n, *, gap_s=0.0):
    """The PLC: wait READY, trigger, wait for the result, ack; n times. Returns the accepted triggers."""
    got = []
    for _ in range(n):
        wait_state(hs, (READY,))
        time.sleep(gap_s)  # stale frames pile up in the queue meanwhile
        t = hs.trigger()
        assert t is not None
        assert hs.trigger() is None  # a second trigger while busy is refused
        snap = wait_state(hs, (RESULT_READY, ERROR))
        assert snap.trigger_seq == t.seq
        got.append((t, snap))
        hs.ack()
    return got


def run_with_plc(pipeline, hs, n, **kw):
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("report", pipeline.run()), daemon=True)
    th.start()
    try:
        got = drive(hs, n, **kw)
    finally:
        pipeline.stop()
        th.join(20)
    assert not th.is_alive()
    return got, out["report"]


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_trigger_judges_exactly_one_frame_captured_after_it(fx, tmp_path):
    rng = np.random.default_rng(5)
    frames = [render_part(rng, (160, 120), defect=i % 3 == 0) for i in range(6)]
    hs = Handshake()
    log_path = tmp_path / "verdicts.jsonl"
    pipeline = Pipeline(OrtBackend(fx.model), LiveGenerated(frames, loop=True, bgr=True), [JsonlSink(log_path)],
                        queue_size=2, trigger=hs)
    got, report = run_with_plc(pipeline, hs, 8, gap_s=0.03)
    recs = _records(log_path)
    assert [r["trigger_seq"] for r in recs] == list(range(1, 9))  # one line per trigger, in order
    for (t, snap), r in zip(got, recs):
        assert r["t_capture_ns"] >= t.t_ns  # captured after its trigger: never a stale queued frame
        assert snap.frame_seq == r["seq"] and snap.verdict == r["verdict"]
        assert 0 <= r["trigger_ms"] < 10_000
        assert r["trigger_ms"] >= (r["t_capture_ns"] - t.t_ns) / 1e6 - 0.01
    assert len({r["seq"] for r in recs}) == 8
    trig = report["trigger"]
    assert trig["trigger_count"] == 8 and trig["refused_triggers"] == 8 and trig["untriggered_frames"] > 0
    assert report["counters"]["processed"] == 8
    assert hs.state == "OFFLINE"


def test_replayed_source_waits_for_triggers(fx, tmp_path):
    rng = np.random.default_rng(6)
    frames = [render_part(rng, (160, 120)) for _ in range(30)]
    hs = Handshake()
    log_path = tmp_path / "verdicts.jsonl"
    pipeline = Pipeline(OrtBackend(fx.model), ArraySource(frames, bgr=True), [JsonlSink(log_path)], trigger=hs)
    got, report = run_with_plc(pipeline, hs, 4, gap_s=0.02)
    recs = _records(log_path)
    assert [r["trigger_seq"] for r in recs] == [1, 2, 3, 4]
    for (t, _), r in zip(got, recs):
        assert r["t_capture_ns"] >= t.t_ns
    assert report["counters"]["processed"] == 4


def test_a_rejected_triggered_frame_sets_error_until_ack(fx, tmp_path):
    hs = Handshake()
    log_path = tmp_path / "verdicts.jsonl"
    bad = np.zeros((0, 0, 3), np.uint8)  # preprocess rejects an empty frame
    pipeline = Pipeline(OrtBackend(fx.model), LiveGenerated([bad], loop=True, bgr=True), [JsonlSink(log_path)], trigger=hs)
    got, _ = run_with_plc(pipeline, hs, 2)
    for t, snap in got:
        assert snap.state == ERROR and snap.error_code == ERR_REJECTED and snap.verdict == "ERROR"
    recs = _records(log_path)
    assert [(r["verdict"], r["trigger_seq"]) for r in recs] == [("REJECTED", 1), ("REJECTED", 2)]


def test_free_run_lines_have_no_trigger_keys(fx, tmp_path):
    frame = render_part(np.random.default_rng(1), (160, 120))
    Pipeline(OrtBackend(fx.model), ArraySource([frame, frame], bgr=True), [JsonlSink(tmp_path / "v.jsonl")]).run()
    for r in _records(tmp_path / "v.jsonl"):
        assert "trigger_seq" not in r and "trigger_ms" not in r
    assert {"trigger_seq", "trigger_ms"} <= set(OPTIONAL_KEYS)
