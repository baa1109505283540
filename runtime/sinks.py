"""Where verdicts go: a JSON-lines log, NG frames as PNG with the heatmap (the live page is the OperatorView
sink in operator_view.py, its page in web/).

Every sink has ``write(result)``, ``reject(record)``, ``tick()`` (the loop is idle) and ``close()``.
The JSON-lines log flushes each line to the OS as it is written (a killed process loses nothing
already written) and fsyncs every ``fsync_every_n`` lines or ``fsync_every_s`` seconds, also when
no further line comes (survives a power cut too). A log that cannot be written raises SinkError:
the run must stop, since a verdict that is not logged did not happen. The NG images are evidence,
not the record: a failed save is noted in the frame's log line and the run goes on.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from protospect.errors import ProtospectError
from protospect.files import write_atomic

log = logging.getLogger(__name__)


class SinkError(ProtospectError):
    """The verdict log cannot be written (disk full, folder gone): the run stops."""


def finite(obj):
    """obj with every NaN/inf float replaced by None: strict JSON, which browsers and jq can parse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def not_finite(value: float) -> str | None:
    """"nan", "inf" or "-inf" for a score JSON cannot hold (it is written as null), else None."""
    return None if math.isfinite(value) else str(float(value))


def json_text(obj, **kwargs) -> str:
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


@dataclass
class Result:
    """One processed frame: the verdict, its timings, and the images the visual sinks need."""

    seq: int
    t_capture_ns: int
    t_wall: float
    score: float
    verdict: str                 # "OK" | "REVIEW" | "NG" (protospect.verdict_record)
    ms: dict                     # stage -> milliseconds
    backend: str
    rgb_fn: Callable[[], np.ndarray]  # full-resolution frame, uint8 RGB, converted on first use
    anomaly_map: np.ndarray      # H x W float32 (the model input's size)
    origin: str = ""
    counters: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # added by sinks that run first (the NG image's name) for the log
    p_value: float | None = None  # conformal p-value, when the thresholds come from a conformal file
    trigger_seq: int | None = None  # PLC trigger mode: the trigger this frame answers
    trigger_ms: float | None = None  # trigger mode (plc: trigger accepted, hardware: frame arrived) -> verdict, ms
    _rgb: np.ndarray | None = field(default=None, repr=False)

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = self.rgb_fn()
        return self._rgb

    def record(self) -> dict:
        score, odd = float(self.score), not_finite(self.score)
        rec = {"seq": self.seq, "t_capture_ns": self.t_capture_ns, "t_wall": round(self.t_wall, 6),
               "score": None if odd else round(score, 6), "verdict": self.verdict}
        if self.p_value is not None:
            rec["p_value"] = round(self.p_value, 6)
        rec["ms"] = {k: round(v, 3) for k, v in self.ms.items()}
        rec["backend"] = self.backend
        if odd:
            rec["score_not_finite"] = odd  # JSON has no NaN/inf: null plus which one
        if self.origin:
            rec["origin"] = self.origin
        if self.trigger_seq is not None:
            rec["trigger_seq"] = self.trigger_seq
            rec["trigger_ms"] = round(self.trigger_ms, 3)
        rec.update(self.notes)
        return rec


class Sink:
    name = "sink"
    annotates = False  # True: writes notes into the Result, so the pipeline runs it before the others
    failures = 0       # frames this sink could not store (the run went on)

    def write(self, result: Result) -> None:
        pass

    def reject(self, record: dict) -> None:
        pass

    def event(self, record: dict) -> None:
        """A line that is not a frame (``{"event": "drift", ...}``, protospect.verdict_record)."""

    def tick(self) -> None:
        """Called when the loop waited for a frame in vain: time-based housekeeping."""

    def close(self) -> None:
        pass


class JsonlSink(Sink):
    """One JSON object per line; flushed per line, fsynced every N lines or every second.

    Each line goes to the OS as one ``os.write`` of its whole bytes (no buffer that could split it); a
    write that fails part-way (disk full) is cut off again where the file was whole, best effort. A log
    whose last line is torn anyway (the machine stopped mid-write) is repaired on open: the fragment
    moves to ``verdicts.jsonl.torn-<time>`` and the log goes on after its last whole line, saying so.
    """

    name = "verdict log"

    def __init__(self, path: str | Path, *, fsync_every_n: int = 100, fsync_every_s: float = 1.0):
        self.path = Path(path)
        self.torn: Path | None = None  # where a torn last line found on open was moved
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.torn = repair_torn_tail(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
        except OSError as err:
            raise SinkError(f"cannot open the verdict log {self.path}: {err}") from err
        self.fsync_every_n = fsync_every_n
        self.fsync_every_s = fsync_every_s
        self._since_sync = 0
        self._last_sync = time.monotonic()
        self.lines = 0

    def _line(self, rec: dict) -> None:
        data = (json_text(rec, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            try:
                done = os.write(self._fd, data)  # whole line, straight to the OS: a kill -9 cannot lose it
                while done < len(data):          # only on a short write (disk filling up): finish or fail
                    done += os.write(self._fd, data[done:])
            except OSError:
                with contextlib.suppress(OSError):  # no torn line left for the next run (best effort)
                    os.ftruncate(self._fd, self._size)
                raise
            self._size += len(data)
            self.lines += 1
            self._since_sync += 1
            if self._since_sync >= self.fsync_every_n:
                self._sync()
            else:
                self._sync_if_due()
        except OSError as err:
            raise SinkError(f"cannot write the verdict log {self.path}: {err}") from err

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._since_sync, self._last_sync = 0, time.monotonic()

    def _sync_if_due(self) -> None:
        if self._since_sync and time.monotonic() - self._last_sync >= self.fsync_every_s:
            self._sync()

    def write(self, result: Result) -> None:
        self._line(result.record())

    def reject(self, record: dict) -> None:
        self._line(record)

    def event(self, record: dict) -> None:
        self._line(record)

    def tick(self) -> None:
        # Without this, the last lines before the line goes quiet would wait for the next part.
        try:
            self._sync_if_due()
        except OSError as err:
            raise SinkError(f"cannot fsync the verdict log {self.path}: {err}") from err

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        except OSError as err:
            raise SinkError(f"cannot flush the verdict log {self.path}: {err}") from err
        finally:
            with contextlib.suppress(OSError):  # a failed fsync above already said why
                os.close(self._fd)
            self._fd = -1


def _last_line_start(f, end: int) -> int:
    """Offset just after the last b"\\n" before ``end`` (0 if none), reading backwards in blocks."""
    pos = end
    while pos > 0:
        step = min(65536, pos)
        f.seek(pos - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def repair_torn_tail(path: Path) -> Path | None:
    """If the log's last line lacks its newline or is not JSON, move it to PATH.torn-<time> and cut the
    log after its last whole line, so the next record starts a line of its own. Returns where the
    fragment went (None: nothing to repair). Only regular files (never /dev/full or a pipe)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return None
    with open(path, "r+b") as f:
        f.seek(st.st_size - 1)
        whole = f.read(1) == b"\n"
        start = _last_line_start(f, st.st_size - 1 if whole else st.st_size)
        if whole:
            f.seek(start)
            try:
                json.loads(f.read(st.st_size - start).decode("utf-8"))
                return None
            except ValueError:  # (UnicodeDecodeError too) a complete line that is not a record
                pass
        f.seek(start)
        fragment = f.read()
        torn = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        n = 0
        while torn.exists():
            n += 1
            torn = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}_{n}")
        write_atomic(torn, fragment)
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: its last line was torn (%d bytes, a run stopped mid-write); moved to %s, the log goes on "
                "after its last whole line", path, len(fragment), torn.name)
    return torn


def heat_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, map_range: tuple[float, float], *,
                 alpha: float = 0.45, label: str | None = None) -> np.ndarray:
    """BGR image (for cv2.imwrite/imencode): the frame with the map in JET colours over it.

    The map is scaled with the model's map_range, not per image, so the same colour means the
    same anomaly level on every frame.
    """
    h, w = rgb.shape[:2]
    lo, hi = map_range
    norm = np.clip((anomaly_map.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    norm = np.nan_to_num(norm, nan=1.0)  # a map that is not a number cannot clear the part: hottest colour
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 1.0 - alpha, heat, alpha, 0.0)
    if label:
        scale = max(0.5, w / 640)
        cv2.putText(out, label, (8, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (0, 0, 0), int(4 * scale), cv2.LINE_AA)
        cv2.putText(out, label, (8, int(28 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
    return out


class NgImageSink(Sink):
    """Saves each NG frame as DIR/ng_<seq>.png with the heatmap (written to a temp name, then renamed).

    A name already taken (an earlier run into the same folder) is never replaced: the image goes to
    the first free ng_<seq>_<n>.png, and the frame's log line names the file ("ng_image"). A save
    that fails (disk full) is noted in that line ("ng_image_error"), counted, logged once, and the
    run goes on: losing a picture must not stop the verdicts.
    """

    name = "NG images"
    annotates = True

    def __init__(self, folder: str | Path, map_range: tuple[float, float]):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SinkError(f"cannot create the NG image folder {self.folder}: {err}") from err
        self.map_range = map_range
        self.saved = 0
        self.failures = 0

    def path_for(self, seq: int) -> Path:
        """The first free name for this frame (one serve per folder: nobody else takes it before the rename)."""
        final, n = self.folder / f"ng_{seq:08d}.png", 0
        while final.exists():
            n += 1
            final = self.folder / f"ng_{seq:08d}_{n}.png"
        return final

    def write(self, result: Result) -> None:
        if result.verdict != "NG":
            return
        try:
            final = self._save(result)
        except (OSError, cv2.error) as err:
            self.failures += 1
            result.notes["ng_image_error"] = str(err)
            if self.failures == 1:
                log.error("cannot save the NG image of frame %d in %s: %s; the run goes on, further failures are "
                          "only noted in the verdict log and counted", result.seq, self.folder, err)
            return
        result.notes["ng_image"] = final.name
        self.saved += 1

    def _save(self, result: Result) -> Path:
        img = heat_overlay(result.rgb, result.anomaly_map, self.map_range, label=f"NG {result.score:.4g} #{result.seq}")
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise OSError(f"cannot encode PNG for frame {result.seq}")
        final = self.path_for(result.seq)
        write_atomic(final, buf.tobytes())  # a reader never sees half a PNG; a full disk leaves no half file
        return final
