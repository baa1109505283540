"""A captured frame with its stamps, and the bounded queue between the capture thread and the loop.

Live cameras produce frames whether or not we keep up; the queue keeps only the newest ones and
counts what it dropped, so a slow model shows up as drops instead of growing memory and latency.
Replayed sources (files, folders) use the blocking policy instead: every frame is processed.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Frame:
    """One frame as it came off the source (any dtype/shape; converted later by preprocess)."""

    seq: int                 # 0, 1, 2, ... in capture order, never reused (also across reconnects)
    t_capture_ns: int        # time.monotonic_ns() when read() returned: for latencies
    t_wall: float            # time.time() at the same moment: for logs a human reads
    image: np.ndarray
    bgr: bool = True         # OpenCV sources deliver BGR; folder replay decodes BGR too
    origin: str = ""         # file name for replay sources, "" for streams


def stamp(seq: int, image: np.ndarray, *, bgr: bool = True, origin: str = "") -> Frame:
    return Frame(seq=seq, t_capture_ns=time.monotonic_ns(), t_wall=time.time(), image=image, bgr=bgr, origin=origin)


class LatestFrameQueue:
    """A queue of at most ``maxsize`` frames.

    policy "latest": put() never blocks; when full the oldest frame is dropped and counted.
    policy "block":  put() waits for room (lossless replay; the producer is slowed down instead).
    close() wakes every waiter; get() then returns None once the queue is empty.
    """

    def __init__(self, maxsize: int = 2, policy: str = "latest"):
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        if policy not in ("latest", "block"):
            raise ValueError(f"unknown queue policy {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        self.dropped = 0
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame) -> bool:
        """Add a frame; False if the queue was closed (the producer should stop)."""
        with self._cond:
            if self.policy == "block":
                while len(self._items) >= self.maxsize and not self._closed:
                    self._cond.wait()
            if self._closed:
                return False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest queued frame; None when closed and drained, or when ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
