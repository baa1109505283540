"""Batching across cameras (issue 18): the cameras that share one model are judged by one loop, which infers
the frames they have ready together when the graph takes a batch (export --batch dynamic).

The batch rule: a batch takes at most one frame per camera of the model. It closes as soon as every live
camera of the model has given a frame, or ``window_ms`` after the capture of its oldest frame, whichever
comes first; whatever is ready then is inferred in one run. A camera that stalls (open, but sending
nothing) therefore delays the others by at most ``window_ms``; a camera whose source ended or failed is no
longer waited for. A frame that waited in its queue for longer than the window goes out with the next
batch at once. Cameras are visited round-robin, so with batching off (``max_batch=1``: a batch-1 graph, a
TensorRT engine, or the unbatched baseline) every camera gets its turn.

A PLC-triggered camera (trigger = "plc") only contributes a frame when triggered: while no trigger waits it
is not waited for (a batch never waits on it), a live camera's frames are taken and skipped, a replay's stay
queued; a trigger rings the bell, and the first frame captured after it joins the next batch (the other
frames of that batch wait at most ``window_ms`` for it). Which frame answers a trigger is
Pipeline.answers(), the rule of single-camera serve --trigger plc.

Every frame taken from a camera's queue is judged and handed to that camera's sinks (its verdict log)
before the loop looks at the stop flag again: a stop never loses a frame already taken.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from protospect.runtime.frames import LatestFrameQueue

log = logging.getLogger(__name__)

DEFAULT_WINDOW_MS = 10.0
IDLE_WAIT_S = 0.2
SKIPPED = "skipped"  # lane.take(frame): a PLC camera's frame that answers no trigger (not judged, not logged)


class Bell:
    """Rung by every camera queue of a model group on put/close; the group's loop waits on it."""

    def __init__(self):
        self._cond = threading.Condition()
        self.rings = 0

    def ring(self) -> None:
        with self._cond:
            self.rings += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Wait up to ``timeout`` s unless it rang since ``seen`` (no lost wake-up); the ring count now."""
        with self._cond:
            if self.rings == seen and timeout > 0:
                self._cond.wait(timeout)
            return self.rings


class BellQueue(LatestFrameQueue):
    """A camera's frame queue that rings its model group's bell when a frame arrives or capture ends."""

    def __init__(self, maxsize: int, policy: str, bell: Bell):
        super().__init__(maxsize, policy)
        self.bell = bell

    def put(self, frame) -> bool:
        ok = super().put(frame)
        self.bell.ring()
        return ok

    def close(self) -> None:
        super().close()
        self.bell.ring()


class NoStages:
    """What judge() reads for per-stage and device times: none for a batched run."""

    last_stage_ms: dict = {}
    last_device_ms = None


class Batcher(threading.Thread):
    """One loop for one model's cameras (``lanes``: objects with ``queue``, ``running``, ``wants_frame`` (take
    from the queue now?), ``expecting`` (wait for this camera's frame?), ``take(frame)`` (Prepared, None: rejected,
    SKIPPED), ``deliver(prep, result, event)``, ``reject(prep, why)``, ``pipeline``, ``tick()`` and
    ``finish(why)``; runtime/multicam.py)."""

    def __init__(self, backend, lanes: list, bell: Bell, *, batched: bool, window_ms: float = DEFAULT_WINDOW_MS,
                 stop: threading.Event):
        super().__init__(name=f"batcher[{lanes[0].name}...]", daemon=True)
        self.backend, self.lanes, self.bell = backend, list(lanes), bell
        self.batched = batched
        self.max_batch = len(self.lanes) if batched else 1
        self.window_ns = int(window_ms * 1e6)
        self.stop_event = stop
        self.sizes = collections.Counter()  # batch size -> how many batches of that size were inferred
        self.error = ""
        self._rr = 0  # round-robin start

    def run(self) -> None:
        try:
            last_tick = time.monotonic()
            while not self.stop_event.is_set():
                if not any(lane.running for lane in self.lanes):
                    break
                batch = self.form()
                if batch:
                    self.infer(batch)
                if not batch or time.monotonic() - last_tick > IDLE_WAIT_S:
                    last_tick = time.monotonic()
                    for lane in self.lanes:
                        if lane.running:
                            lane.tick()
        except Exception as err:  # never die silently: every camera of this model is stopped with the reason
            self.error = f"inference failed: {err}"
            log.error("cameras %s: %s", ", ".join(lane.name for lane in self.lanes), self.error)
            log.debug("inference loop failed", exc_info=True)  # the traceback with --verbose only
        finally:
            for lane in self.lanes:
                lane.finish(self.error or "stopped")

    def form(self) -> list:
        """[(lane, Prepared)] by the batch rule (module doc); [] after IDLE_WAIT_S with nothing ready."""
        batch, given, oldest = [], set(), None
        seen, t_start = self.bell.rings, time.monotonic()
        while True:
            n = len(self.lanes)
            order = [self.lanes[(self._rr + i) % n] for i in range(n)]
            for lane in order:
                if len(batch) >= self.max_batch:
                    break
                if lane in given or not lane.running or not lane.wants_frame:
                    continue
                frame = lane.queue.get(timeout=0)
                if frame is None:
                    if lane.queue.closed and not len(lane.queue):
                        lane.finish("")  # capture ended (eof, error, gave up): its reason is in capture.ended
                    continue
                prep = lane.take(frame)
                if prep is SKIPPED:  # PLC: no trigger waits, or captured before it (counted by its pipeline)
                    continue
                given.add(lane)
                self._rr = (self.lanes.index(lane) + 1) % n
                if prep is not None:  # None: rejected, already logged as such
                    batch.append((lane, prep))
                    oldest = frame.t_capture_ns if oldest is None else min(oldest, frame.t_capture_ns)
            running = [lane for lane in self.lanes if lane.running]
            waiting = [lane for lane in running if lane not in given and lane.expecting]
            if len(batch) >= self.max_batch or not running or self.stop_event.is_set() or not waiting and given:
                return batch
            if oldest is None:
                if given:  # only rejected frames this round
                    return batch
                # nothing yet (or every camera is between PLC triggers): a frame or a trigger rings the bell
                now_seen = self.bell.wait(seen, IDLE_WAIT_S)
                if now_seen == seen or time.monotonic() - t_start >= IDLE_WAIT_S:
                    return batch  # idle: the caller ticks the sinks
                seen = now_seen
                continue
            remaining = (oldest + self.window_ns - time.monotonic_ns()) / 1e9
            if remaining <= 0:
                return batch
            seen = self.bell.wait(seen, remaining)

    def infer(self, batch: list) -> None:
        try:
            self._infer(batch)
        except Exception as err:  # the frames taken are logged (REJECTED, with why), then every camera stops
            for lane, prep in batch:
                if not prep.t3:
                    lane.reject(prep, f"inference failed: {err}")
            raise

    def _infer(self, batch: list) -> None:
        preps = [prep for _, prep in batch]
        self.sizes[len(batch)] += 1
        if self.batched:
            maps, scores = self.backend.infer_batch(np.stack([p.model_in for p in preps]))
            t2 = time.monotonic_ns()
            outputs = [(maps[i], float(scores[i])) for i in range(len(preps))]
            for p in preps:
                p.t2 = t2
            timing = NoStages
        else:
            outputs = []
            for p in preps:  # max_batch 1: one frame
                outputs.append(self.backend.infer(p.model_in))
                p.t2 = time.monotonic_ns()
            timing = self.backend
        judged = [lane.pipeline.judge(p, amap, score, timing) for (lane, p), (amap, score) in zip(batch, outputs)]
        for (lane, prep), (result, event) in zip(batch, judged):  # every verdict is judged before any is written
            lane.deliver(prep, result, event)

    def stats(self) -> dict:
        n = sum(self.sizes.values())
        frames = sum(size * count for size, count in self.sizes.items())
        return {"cameras": [lane.name for lane in self.lanes], "batched": self.batched,
                "window_ms": self.window_ns / 1e6, "batches": n, "frames": frames,
                "mean_batch": round(frames / n, 3) if n else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())}}
