"""camera -> capture thread -> preprocess -> infer -> verdict -> sinks, with per-stage timing.

    pipeline = Pipeline(backend, open_source("line.avi"), [JsonlSink("log.jsonl")])
    report = pipeline.run()          # returns when the source ends, max_frames is reached, stop(),
                                     # or the verdict log cannot be written (report["sink_error"])

Stages timed per frame (milliseconds, all host clocks):
  wait          capture stamp -> the loop takes the frame (queueing)
  preprocess    conversion to RGB uint8 + resize to the model's H x W
  infer         backend.infer (host -> device -> host for GPU backends)
  postprocess   verdict from the thresholds (OK / REVIEW / NG), p-value, drift watch
  host_to_host  preprocess + infer + postprocess: frame in host memory -> verdict on host
  capture_to_verdict  capture stamp -> verdict (what the line sees)
  sink          all sinks for this frame (not in the frame's own record: it is written there)
  device        GPU-only time where the backend measures it (TensorRT, CUDA events)

PLC trigger mode (``trigger=Handshake()``, serve --trigger plc; runtime/line/handshake.py): exactly one frame
is judged per accepted trigger, the first one captured at or after the trigger (capture stamp >= trigger
time); frames captured before it, or while no trigger waits, are skipped, never judged. The verdict line
gets ``trigger_seq`` and ``trigger_ms`` (trigger -> verdict), and the handshake shows the result only
after every sink has written the line. A replayed (not live) source is paced by the triggers: its
frames wait in the queue until a trigger comes. Without a handshake the loop is unchanged.

Hardware trigger mode (``hardware_trigger=True``, serve --trigger hardware): every delivered frame answers one
pulse on the camera's trigger line; its line gets ``trigger_seq`` (1, 2, ... per delivered frame) and
``trigger_ms`` measured from the frame's arrival on the host (its capture stamp): the pulse itself, the
exposure and the transfer are not visible to the host.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from tqdm import tqdm

from protospect.runtime.frames import Frame, LatestFrameQueue
from protospect.runtime.line.handshake import ERR_REJECTED, Trigger
from protospect.runtime.preprocess import FrameRejected, preprocess
from protospect.runtime.sinks import Result, Sink, SinkError
from protospect.runtime.sources import CaptureThread, Source, default_queue_policy
from protospect.runtime.stats import RunCounters, StageTimes
from protospect.conformal import judge
from protospect.errors import BackendUnavailable
from protospect.verdict_record import NG, OK, REJECTED, REVIEW

log = logging.getLogger(__name__)

BACKEND_UNAVAILABLE = "backend unavailable"  # rejected_reasons key: frames a lost remote backend (Triton) could not judge
STAGE_ORDER = ["wait", "preprocess", "infer", "postprocess", "host_to_host", "capture_to_verdict", "sink", "device"]


@dataclass
class Prepared:
    """A frame after preprocess, waiting for its map and score (the multi-camera batcher holds several)."""

    frame: Frame
    model_in: object          # uint8 H x W x 3 RGB (the model input)
    rgb_fn: object            # full-resolution RGB on first use
    t0: int                   # monotonic ns: the loop took the frame
    t1: int                   # preprocess done
    trig: object = None       # the PLC trigger it answers (trigger mode)
    t2: int = 0               # map and score back (set by whoever inferred it)
    t3: int = 0               # verdict done (set by judge)


class Pipeline:
    def __init__(self, backend, source: Source, sinks: list[Sink] | tuple = (), *, queue_size: int = 2,
                 policy: str | None = None, max_frames: int | None = None, warmup: int = 0,
                 backoff_s: float = 0.1, backoff_max_s: float = 5.0, max_reconnect_attempts: int | None = None,
                 progress: bool = False, on_frame=None, drift=None, trigger=None, hardware_trigger: bool = False):
        self.backend = backend
        self.source = source
        # Sinks that add notes to a result (the NG image's file name) run before the log that writes them.
        self.sinks = sorted(sinks, key=lambda s: not s.annotates)
        self.queue_size = queue_size
        self.policy = policy
        self.max_frames = max_frames
        self.warmup = warmup
        self.backoff = (backoff_s, backoff_max_s, max_reconnect_attempts)
        self.progress = progress
        self.on_frame = on_frame  # called with each Result (soak uses it to sample memory)
        self.drift = drift        # runtime.verdict.drift.DriftWatch fed with OK/REVIEW scores, or None
        self.trigger = trigger    # runtime.line.handshake.Handshake: PLC trigger mode; None: every frame
        self.untriggered = 0      # trigger mode: frames skipped (no trigger waiting, or captured before it)
        self.hardware_trigger = hardware_trigger  # each delivered frame answers one pulse (serve --trigger hardware)
        self.hardware_triggers = 0
        self._last_tick = 0.0
        self.counters = RunCounters()
        self.times = StageTimes()
        self.capture: CaptureThread | None = None
        self.queue: LatestFrameQueue | None = None
        self._stop = threading.Event()
        self._handled = 0
        self.sink_error = ""  # why a sink stopped the run (the verdict log could not be written)

    def stop(self) -> None:
        """Ask the loop to finish after the current frame (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> dict:
        with self.backend:
            try:
                self.source.open()  # SourceError here: the source can never work, nothing to retry
            except BaseException:
                self._close_sinks()  # the log is closed (fsynced) even when the run never starts
                raise
            self.queue = LatestFrameQueue(self.queue_size, self.policy or default_queue_policy(self.source))
            b0, b1, b2 = self.backoff
            self.capture = CaptureThread(self.source, self.queue, backoff_s=b0, backoff_max_s=b1, max_reconnect_attempts=b2)
            bar = tqdm(total=self.max_frames, desc="frames", unit="f", disable=not self.progress, leave=False)
            self.capture.start()
            if self.trigger is not None:
                self.trigger.online()
            try:
                while not self._stop.is_set():
                    pending = None
                    if self.trigger is not None:
                        pending = self.trigger.pending()
                        if pending is None and not self.source.live:
                            # a replay waits for the trigger with its frames still queued
                            if self.trigger.wait_pending(0.2) is None:
                                if self.queue.closed and not len(self.queue):
                                    break
                                self._tick()
                            continue
                    frame = self.queue.get(timeout=0.2)
                    if frame is None:
                        # closed first, then empty: a frame put just before close() is still processed
                        if self.queue.closed and not len(self.queue):
                            break
                        for sink in self.sinks:
                            sink.tick()
                        continue
                    judged, pending = self.answers(frame, pending)
                    if not judged:  # trigger mode: no trigger waits, or a stale frame from before it
                        if time.monotonic() - self._last_tick >= 0.2:
                            self._tick()
                        continue
                    self._process(frame, pending)
                    bar.update(1)
                    if self.max_frames is not None and self._handled >= self.max_frames:
                        break
            except SinkError as err:
                self._sink_failed(err)
            finally:
                bar.close()
                if self.trigger is not None:
                    self.trigger.offline()  # a trigger still waiting fails: ERROR, "inspection stopped"
                self.capture.stop()
                self.capture.join(timeout=10)
                self.counters.dropped = self.queue.dropped
                self.counters.reconnects = self.capture.reconnects
                self._close_sinks()
            return self.report()  # before the backend closes: describe() reads what activate() loaded

    def answers(self, frame: Frame, pending: Trigger | None = None) -> tuple[bool, Trigger | None]:
        """(judge this frame?, the trigger it answers). PLC mode: only the first frame captured at or after the
        waiting trigger is judged; one captured before it, or while no trigger waits, is skipped and counted in
        ``untriggered``. Hardware mode: every frame answers the next pulse. Free: (True, None). Also used by
        serve --config (runtime/multicam.py), so both apply the same rule."""
        if self.trigger is not None:
            pending = pending or self.trigger.pending()
            if pending is None or frame.t_capture_ns < pending.t_ns:
                self.untriggered += 1
                return False, None
            return True, pending
        if self.hardware_trigger:  # the frame is the camera's answer to the next pulse
            self.hardware_triggers += 1
            return True, Trigger(self.hardware_triggers, frame.t_capture_ns)
        return True, None

    def _tick(self) -> None:
        self._last_tick = time.monotonic()
        for sink in self.sinks:
            sink.tick()

    def _sink_failed(self, err: SinkError) -> None:
        self.sink_error = self.sink_error or str(err)  # the first says why; the caller reports it

    def _close_sinks(self) -> None:
        for sink in self.sinks:  # every one, even after another failed
            try:
                sink.close()
            except SinkError as err:
                self._sink_failed(err)

    def _process(self, frame: Frame, trig=None) -> None:
        prep = self.prepare(frame, trig)
        if prep is None:
            return
        try:
            amap, score = self.backend.infer(prep.model_in)
        except BackendUnavailable as err:  # a remote backend (Triton) lost mid-run: the frame is logged, not judged
            self.reject(frame, BACKEND_UNAVAILABLE, f"{BACKEND_UNAVAILABLE}: {err}", trig)
            return
        prep.t2 = time.monotonic_ns()
        self.deliver(prep, *self.judge(prep, amap, score, self.backend))

    def prepare(self, frame: Frame, trig=None) -> Prepared | None:
        """Preprocess one frame (timed); None when it is rejected (its record is then already with every sink)."""
        info = self.backend.info
        self._handled += 1
        t0 = time.monotonic_ns()
        try:
            model_in, rgb_fn = preprocess(frame, info.input_hw)
        except FrameRejected as rej:
            self.reject(frame, rej.reason, rej.reason, trig)
            return None
        return Prepared(frame, model_in, rgb_fn, t0, time.monotonic_ns(), trig)

    def reject(self, frame: Frame, key: str, reason: str, trig=None) -> None:
        """A frame that could not be judged: counted under ``key``, logged REJECTED with ``reason`` by every sink."""
        self.counters.rejected[key] += 1
        log.warning("frame %d rejected: %s", frame.seq, reason)
        record = {"seq": frame.seq, "t_capture_ns": frame.t_capture_ns, "t_wall": round(frame.t_wall, 6),
                  "verdict": REJECTED, "reason": reason}
        if frame.origin:
            record["origin"] = frame.origin
        if trig is not None:
            record["trigger_seq"] = trig.seq
            record["trigger_ms"] = round((time.monotonic_ns() - trig.t_ns) / 1e6, 3)
        for sink in self.sinks:
            sink.reject(record)
        if trig is not None and self.trigger is not None:
            self.trigger.fail(ERR_REJECTED, f"frame {frame.seq} rejected: {reason}")

    def judge(self, prep: Prepared, amap, score: float, timing) -> tuple[Result, dict | None]:
        """The verdict of a prepared frame whose map and score came back (prep.t2 set); ``timing`` gives
        last_stage_ms / last_device_ms (the backend). Returns the result and a drift event (or None)."""
        info, frame, trig = self.backend.info, prep.frame, prep.trig
        t0, t1, t2 = prep.t0, prep.t1, prep.t2
        # A score that is not a number cannot clear a part: fail safe to NG (judge does).
        verdict = judge(score, info.threshold, info.review_threshold)
        op = info.operating_point
        p_value = op.p_value(score) if op is not None else None
        event = None
        if self.drift is not None and verdict in (OK, REVIEW):
            event = self.drift.update(score, frame.seq, frame.t_wall)
        t3 = prep.t3 = time.monotonic_ns()
        ms = {"wait": (t0 - frame.t_capture_ns) / 1e6, "preprocess": (t1 - t0) / 1e6, "infer": (t2 - t1) / 1e6,
              "postprocess": (t3 - t2) / 1e6, "host_to_host": (t3 - t0) / 1e6,
              "capture_to_verdict": (t3 - frame.t_capture_ns) / 1e6}
        for stage, value in timing.last_stage_ms.items():
            ms[f"infer.{stage}"] = value
        if timing.last_device_ms is not None:
            ms["device"] = timing.last_device_ms
        c = self.counters
        c.processed += 1
        c.ok += verdict == OK
        c.review += verdict == REVIEW
        c.ng += verdict == NG
        if self.drift is not None:
            c.drift_events = self.drift.events
        c.dropped = self.queue.dropped
        c.reconnects = self.capture.reconnects if self.capture else 0
        result = Result(seq=frame.seq, t_capture_ns=frame.t_capture_ns, t_wall=frame.t_wall, score=score,
                        verdict=verdict, ms=ms, backend=self.backend.name, rgb_fn=prep.rgb_fn, anomaly_map=amap,
                        origin=frame.origin, counters=c.as_dict(), p_value=p_value)
        if trig is not None:
            result.trigger_seq, result.trigger_ms = trig.seq, (t3 - trig.t_ns) / 1e6
        return result, event

    def deliver(self, prep: Prepared, result: Result, event: dict | None) -> None:
        """Every sink gets the result (SinkError from the log propagates), then the PLC, the drift event, timing."""
        frame, trig, c, ms = prep.frame, prep.trig, self.counters, result.ms
        for sink in self.sinks:
            sink.write(result)
        if trig is not None and self.trigger is not None:  # the PLC sees the verdict only once it is logged
            self.trigger.result(result.verdict, float(result.score), frame.seq)
        if event is not None:
            log.warning("%s at frame %d: %d of the last %d OK/REVIEW scores above the calibration's 95th percentile "
                        "%.4g (p = %.2g); thresholds unchanged", event["event"], frame.seq, event["above"],
                        event["window"], event["reference"], event["p_value"])
            for sink in self.sinks:
                sink.event(event)
        t4 = time.monotonic_ns()
        if c.processed > self.warmup:  # warm-up frames are processed and logged, not timed
            c.timed += 1
            ms["sink"] = (t4 - prep.t3) / 1e6
            for stage, value in ms.items():
                self.times.add(stage, value)
            now = time.monotonic()
            if c.t_first is None:
                c.t_first = now
            c.t_last = now
        if self.on_frame is not None:
            self.on_frame(result)

    def report(self) -> dict:
        extra = {"drift": self.drift.state()} if self.drift is not None else {}
        if self.trigger is not None:
            extra["trigger"] = {**self.trigger.snapshot().as_dict(), "untriggered_frames": self.untriggered}
        elif self.hardware_trigger:
            extra["trigger"] = {"mode": "hardware", "trigger_count": self.hardware_triggers}
        return {**extra, "counters": self.counters.as_dict(), "stages": self.times.summary(),
                "backend": self.backend.describe(), "source": self.source.name,
                "capture_ended": self.capture.ended if self.capture else "", "warmup": self.warmup,
                "sink_failures": {s.name: s.failures for s in self.sinks if s.failures}, "sink_error": self.sink_error}
