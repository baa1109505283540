"""Per-stage latency bookkeeping in fixed memory, its percentile table, and a histogram PNG (OpenCV).

Samples go into preallocated ring buffers (the newest ``capacity`` per stage), so a run of 10^5
frames or a day on the line keeps the same resident memory.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path

import cv2
import numpy as np

from protospect.files import write_atomic

PERCENTILES = (50, 90, 99)


class StageTimes:
    """Milliseconds per named stage, kept in ring buffers of ``capacity`` samples each."""

    def __init__(self, capacity: int = 1 << 17):
        self.capacity = capacity
        self._rings: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = collections.Counter()

    def add(self, stage: str, ms: float) -> None:
        ring = self._rings.get(stage)
        if ring is None:
            ring = self._rings[stage] = np.full(self.capacity, np.nan)  # full, not zeros: touch the pages now
        ring[self._counts[stage] % self.capacity] = ms
        self._counts[stage] += 1

    def values(self, stage: str) -> np.ndarray:
        n = min(self._counts.get(stage, 0), self.capacity)
        return self._rings[stage][:n].copy() if n else np.empty(0)

    @property
    def stages(self) -> list[str]:
        return list(self._rings)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage in self._rings:
            v = self.values(stage)
            if v.size:
                out[stage] = {"n": int(self._counts[stage]), "mean": float(v.mean()),
                              **{f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES}, "max": float(v.max())}
        return out


class RunCounters:
    """Frames in / out / rejected (by reason) / dropped / reconnects, plus wall time for frames/s."""

    def __init__(self):
        self.processed = 0
        self.timed = 0       # processed after warm-up: these are in the latency table and frames/s
        self.ok = 0
        self.review = 0
        self.ng = 0
        self.drift_events = 0  # times the drift watch fired
        self.rejected = collections.Counter()
        self.dropped = 0
        self.reconnects = 0
        self.t_first = None  # first processed frame after warm-up: the frames/s clock starts here
        self.t_last = None

    def fps(self) -> float:
        if self.t_first is None or self.t_last is None or self.t_last <= self.t_first or self.timed < 2:
            return 0.0
        return (self.timed - 1) / (self.t_last - self.t_first)

    def as_dict(self) -> dict:
        return {"processed": self.processed, "ok": self.ok, "review": self.review, "ng": self.ng,
                "rejected": sum(self.rejected.values()), "drift_events": self.drift_events,
                "rejected_reasons": dict(self.rejected), "dropped": self.dropped, "reconnects": self.reconnects,
                "fps": round(self.fps(), 2)}


def format_table(summary: dict[str, dict[str, float]], order: list[str] | None = None) -> str:
    """A fixed-width per-stage table: stage, n, mean, p50, p90, p99, max (milliseconds)."""
    cols = ["n", "mean"] + [f"p{p}" for p in PERCENTILES] + ["max"]
    stages = [s for s in (order or []) if s in summary] + [s for s in summary if s not in (order or [])]
    lines = [f"{'stage (ms)':<20}" + "".join(f"{c:>10}" for c in cols)]
    for stage in stages:
        row = summary[stage]
        lines.append(f"{stage:<20}" + f"{row['n']:>10d}" + "".join(f"{row[c]:>10.2f}" for c in cols[1:]))
    return "\n".join(lines)


def draw_histogram(values_ms: np.ndarray, path: str, title: str, *, bins: int = 40, size=(800, 420), unit: str = "ms",
                   markers: list[tuple[str, float, tuple[int, int, int]]] | None = None) -> None:
    """histogram_png written to ``path`` atomically (a reader never sees half a PNG)."""
    write_atomic(Path(path), histogram_png(values_ms, title, bins=bins, size=size, unit=unit, markers=markers))


def histogram_png(values_ms: np.ndarray, title: str, *, bins: int = 40, size=(800, 420), unit: str = "ms",
                  markers: list[tuple[str, float, tuple[int, int, int]]] | None = None) -> bytes:
    """Histogram drawn with OpenCV (the runtime has no matplotlib), as PNG bytes. Vertical lines at ``markers``
    (label, value, BGR colour), by default the p50 and p99 of the values (latency)."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 60
    cv2.putText(img, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    v = np.asarray(values_ms, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        cv2.putText(img, "no samples", (left, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 255), 1, cv2.LINE_AA)
        return _png(img)
    fmt = "{:.2f}" if unit == "ms" else "{:.3g}"
    if markers is None:
        markers = [(f"p{p}", float(np.percentile(v, p)), colour) for p, colour in ((50, (0, 160, 0)), (99, (0, 0, 220)))]
    lo = min([float(v.min())] + [m[1] for m in markers])
    hi = max([float(v.max())] + [m[1] for m in markers])
    hi = hi if hi > lo else lo + 1e-3
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    pw, ph = w - left - right, h - top - bottom
    cmax = max(int(counts.max()), 1)
    for i, c in enumerate(counts):
        x0 = left + int(i * pw / bins)
        x1 = left + int((i + 1) * pw / bins) - 1
        y0 = top + ph - int(c * ph / cmax)
        cv2.rectangle(img, (x0, y0), (x1, top + ph), (180, 120, 40), -1)
    cv2.line(img, (left, top + ph), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.line(img, (left, top), (left, top + ph), (0, 0, 0), 1)
    for frac in (0.0, 0.5, 1.0):
        x = left + int(frac * pw)
        tick = lo + frac * (hi - lo)
        cv2.putText(img, fmt.format(tick), (x - 20, top + ph + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, unit, (left + pw // 2, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, str(cmax), (10, top + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (label, q, colour) in enumerate(markers):
        x = left + int((q - lo) / (hi - lo) * pw)
        cv2.line(img, (x, top), (x, top + ph), colour, 2)
        text = f"{label} {fmt.format(q)}"
        tw = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0]
        tx = x + 4 if x + 4 + tw < w else x - 4 - tw  # left of its line at the right edge
        cv2.putText(img, text, (tx, top + 15 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return _png(img)


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("OpenCV could not encode the histogram as PNG")
    return buf.tobytes()


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource  # Unix only, and only needed off Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
