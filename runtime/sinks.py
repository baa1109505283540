"""Where verdicts go: a JSON-lines log, NG frames as PNG with the heatmap, (and the live page, web.py).

Every sink has ``write(result)``, ``reject(record)`` and ``close()``. The JSON-lines log flushes
each line to the OS as it is written (a killed process loses nothing already written) and
fsyncs every ``fsync_every_n`` lines or ``fsync_every_s`` seconds (survives a power cut too).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from protospect.errors import ConfigError


@dataclass
class Result:
    """One processed frame: the verdict, its timings, and the images the visual sinks need."""

    seq: int
    t_capture_ns: int
    t_wall: float
    score: float
    verdict: str                 # "OK" | "NG"
    ms: dict                     # stage -> milliseconds
    backend: str
    rgb_fn: Callable[[], np.ndarray]  # full-resolution frame, uint8 RGB, converted on first use
    anomaly_map: np.ndarray      # S x S float32
    origin: str = ""
    counters: dict = field(default_factory=dict)
    _rgb: np.ndarray | None = field(default=None, repr=False)

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = self.rgb_fn()
        return self._rgb

    def record(self) -> dict:
        rec = {"seq": self.seq, "t_capture_ns": self.t_capture_ns, "t_wall": round(self.t_wall, 6),
               "score": round(float(self.score), 6), "verdict": self.verdict,
               "ms": {k: round(v, 3) for k, v in self.ms.items()}, "backend": self.backend}
        if self.origin:
            rec["origin"] = self.origin
        return rec


class Sink:
    def write(self, result: Result) -> None:
        pass

    def reject(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink(Sink):
    """One JSON object per line; flushed per line, fsynced every N lines or every second."""

    def __init__(self, path: str | Path, *, fsync_every_n: int = 100, fsync_every_s: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8", buffering=1)
        self.fsync_every_n = fsync_every_n
        self.fsync_every_s = fsync_every_s
        self._since_sync = 0
        self._last_sync = time.monotonic()
        self.lines = 0

    def _line(self, rec: dict) -> None:
        self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._f.flush()  # in the OS page cache now: a kill -9 of this process cannot lose it
        self.lines += 1
        self._since_sync += 1
        now = time.monotonic()
        if self._since_sync >= self.fsync_every_n or now - self._last_sync >= self.fsync_every_s:
            os.fsync(self._f.fileno())
            self._since_sync, self._last_sync = 0, now

    def write(self, result: Result) -> None:
        self._line(result.record())

    def reject(self, record: dict) -> None:
        self._line(record)

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def heat_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, map_range: tuple[float, float], *,
                 alpha: float = 0.45, label: str | None = None) -> np.ndarray:
    """BGR image (for cv2.imwrite/imencode): the frame with the map in JET colours over it.

    The map is scaled with the model's map_range, not per image, so the same colour means the
    same anomaly level on every frame.
    """
    h, w = rgb.shape[:2]
    lo, hi = map_range
    norm = np.clip((anomaly_map.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 1.0 - alpha, heat, alpha, 0.0)
    if label:
        scale = max(0.5, w / 640)
        cv2.putText(out, label, (8, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (0, 0, 0), int(4 * scale), cv2.LINE_AA)
        cv2.putText(out, label, (8, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
    return out


class NgImageSink(Sink):
    """Saves each NG frame as DIR/ng_<seq>.png with the heatmap (written to a temp name, then renamed)."""

    def __init__(self, folder: str | Path, map_range: tuple[float, float]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.map_range = map_range
        self.saved = 0

    def path_for(self, seq: int) -> Path:
        return self.folder / f"ng_{seq:08d}.png"

    def write(self, result: Result) -> None:
        if result.verdict != "NG":
            return
        img = heat_overlay(result.rgb, result.anomaly_map, self.map_range, label=f"NG {result.score:.4g} #{result.seq}")
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise ConfigError(f"cannot encode PNG for frame {result.seq}")
        final = self.path_for(result.seq)
        tmp = final.with_suffix(".png.part")
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, final)  # a reader never sees half a PNG, even if we are killed mid-write
        self.saved += 1
