"""Frame sources: cameras, streams, video files, GStreamer pipelines, image folders, GenICam.

``open_source(spec)`` picks the source from the spec string:

  "0", "1"                      V4L2/USB camera index (cv2.VideoCapture(index))
  "rtsp://...", "http://..."    network stream (live: lost frames trigger a reconnect)
  "part.avi", "line.mp4"        video file (replay; end of file ends the run unless loop=True)
  "... ! appsink ..."           GStreamer pipeline (needs an OpenCV built with GStreamer). On a
                                Jetson CSI camera:
                                nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,
                                height=720,framerate=30/1,format=NV12 ! nvvidconv ! video/x-raw,
                                format=BGRx ! videoconvert ! video/x-raw,format=BGR !
                                appsink drop=1 max-buffers=1 sync=false
                                (drop=1 max-buffers=1 keeps the latency at one frame)
  "dir/", "dir/*.png", "a.png"  image folder / glob / single image replay (sorted by name)
  "genicam:/path/vendor.cti"    GenICam camera through harvesters (pip install 'protospect[camera]');
                                "genicam:/path/vendor.cti#2" picks device 2

A source is opened once by the caller (``open()`` raises SourceError when it can never work);
``read()`` returns the next raw frame, None at the end of a finite source, IDLE when a live source
had nothing to deliver yet (a triggered camera between parts: not a loss), and raises SourceLost
when a live source stops delivering (the capture thread then reconnects with back-off).
"""
from __future__ import annotations

import glob
import logging
import os
import re
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from protospect._optional import require
from protospect.errors import DataError, SourceError
from protospect.imageio import IMAGE_SUFFIXES, decode_bytes
from protospect.runtime.frames import LatestFrameQueue, stamp
from protospect.runtime.pixel_formats import genicam_to_rgb

log = logging.getLogger(__name__)

IDLE = object()  # read(): no frame yet, the source is fine (keep waiting; check for stop)

GLOB_CHARS = set("*?[")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*$")  # scheme://... with no spaces (a pipeline has them)


class SourceLost(Exception):
    """A live source stopped delivering frames (internal signal to the capture thread)."""


class Source:
    """Base of every source. Subclasses set ``name``, ``live`` and ``bgr``."""

    name = "source"
    live = False   # live sources reconnect when lost; finite ones end
    bgr = True     # channel order of 3/4-channel frames this source returns
    origin = ""    # file name of the last frame, for replay sources

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class VideoCaptureSource(Source):
    """cv2.VideoCapture over a camera index, URL, video file or GStreamer pipeline.

    ``capture_factory(target, api)`` builds the capture; tests inject fakes to simulate a camera
    that drops out and comes back.
    """

    def __init__(self, target: int | str, *, kind: str, loop: bool = False,
                 capture_factory: Callable | None = None):
        self.target = target
        self.kind = kind  # "camera" | "stream" | "video" | "gstreamer"
        self.live = kind != "video"
        self.loop = loop
        self.name = f"{kind}:{target}"
        self._factory = capture_factory or (lambda t, api: cv2.VideoCapture(t, api))
        self._cap = None

    def _api(self) -> int:
        return cv2.CAP_GSTREAMER if self.kind == "gstreamer" else cv2.CAP_ANY

    def open(self) -> None:
        if self.kind == "video" and not Path(str(self.target)).is_file():
            raise SourceError(f"video file not found: {self.target}")
        self.close()
        cap = self._factory(self.target, self._api())
        if cap is None or not cap.isOpened():
            raise SourceError(f"cannot open {self.name}: {self._hint()}")
        self._cap = cap

    def _hint(self) -> str:
        if self.kind == "camera":
            return "check the camera is plugged in, not used by another process, and /dev/video* is readable"
        if self.kind == "stream":
            return "check the URL, credentials and that the camera/server is reachable from this machine"
        if self.kind == "gstreamer":
            has_gst = re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None
            return ("check the pipeline with gst-launch-1.0 and that it ends in 'appsink'" if has_gst else
                    "this OpenCV was built without GStreamer (use JetPack's OpenCV on a Jetson)")
        return "the file exists but OpenCV cannot decode it (unsupported codec or corrupt file)"

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceLost(f"{self.name} is not open")
        ok, img = self._cap.read()
        if ok and img is not None:
            return img
        if self.live:
            raise SourceLost(f"{self.name} delivered no frame")
        if self.loop:  # rewind the file and go on
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = self._cap.read()
            return img if ok else None
        return None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _next_item(src, items: list):
    """The next of a list-backed source's items (``src._next`` is its cursor); None at the end unless it loops."""
    if src._next >= len(items):
        if not src.loop:
            return None
        src._next = 0
    item = items[src._next]
    src._next += 1
    return item


class FolderSource(Source):
    """Image files in name order (a folder, a glob, or one file); loop=True repeats them forever.

    Files are decoded with IMREAD_UNCHANGED so 16-bit, gray and 4-channel images reach the
    preprocess step as they are; an undecodable file becomes an empty frame, which preprocess
    rejects with the file's name (the run goes on).
    """

    def __init__(self, files: list[Path], *, loop: bool = False, name: str = "folder"):
        self.files = list(files)
        self.loop = loop
        self.name = name
        self._next = 0

    def open(self) -> None:
        if not self.files:
            raise SourceError(f"no image files in {self.name} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        self._next = 0

    def read(self) -> np.ndarray | None:
        path = _next_item(self, self.files)
        if path is None:
            return None
        self.origin = path.name
        data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else np.empty(0, np.uint8)
        try:
            return decode_bytes(data)
        except DataError:  # an undecodable file is a rejected frame (logged with its origin), not a dead source
            return np.empty(0, np.uint8)


class ArraySource(Source):
    """Frames already in memory (bench without a source, tests). bgr says their channel order."""

    def __init__(self, frames: list[np.ndarray], *, loop: bool = False, bgr: bool = False, name: str = "memory"):
        self.frames = frames
        self.loop = loop
        self.bgr = bgr
        self.name = name
        self._next = 0

    def open(self) -> None:
        if not self.frames:
            raise SourceError("in-memory source has no frames")
        self._next = 0

    def read(self) -> np.ndarray | None:
        return _next_item(self, self.frames)


class HarvesterSource(Source):
    """A GenICam (GigE Vision / USB3 Vision) camera through a vendor GenTL producer (.cti)."""

    live = True
    bgr = False  # read() converts every pixel format to RGB (pixel_formats.py)

    def __init__(self, cti: str, index: int = 0, timeout_s: float = 3.0, trigger_source: str | None = None):
        self.cti, self.index, self.timeout_s, self.trigger_source = cti, index, timeout_s, trigger_source
        self.name = f"genicam:{cti}#{index}"
        self._harvester = self._acquirer = None  # trigger_source: --trigger hardware (genicam_trigger.py)

    def open(self) -> None:
        if not Path(self.cti).is_file():
            raise SourceError(f"GenTL producer not found: {self.cti} (install the camera vendor's SDK; on a Jetson it must be an aarch64 .cti)")
        harvesters = require("harvesters.core", "camera")
        self.close()
        h = harvesters.Harvester()
        h.add_file(self.cti)
        h.update()
        if len(h.device_info_list) <= self.index:
            h.reset()
            raise SourceError(f"{self.name}: {len(h.device_info_list)} GenICam device(s) found, index {self.index} requested")
        self._harvester = h
        self._acquirer = h.create(self.index)
        if self.trigger_source is not None:  # before start: TriggerMode is not writable while acquiring
            from protospect.runtime.genicam_trigger import set_hardware_trigger
            set_hardware_trigger(self._acquirer, self.trigger_source, self.name)
        self._acquirer.start()

    def read(self):
        try:
            with self._acquirer.fetch(timeout=self.timeout_s) as buf:
                comp = buf.payload.components[0]
                # converted (a copy) before the with-block re-queues the buffer to the camera
                return genicam_to_rgb(comp.data, str(comp.data_format), int(comp.height), int(comp.width))
        except SourceError:
            raise  # a pixel format we cannot read: reconnecting would not change it
        except Exception as err:  # harvesters raises genicam.gentl's timeout / transport errors
            if type(err).__name__ == "TimeoutException":
                # A hardware-triggered camera sends nothing between parts: waiting is normal, and a
                # reset here would miss the next trigger. Transport errors below do reconnect.
                return IDLE
            raise SourceLost(f"{self.name}: {err}") from err

    def close(self) -> None:
        if self._acquirer is not None:
            try:
                self._acquirer.stop()
                self._acquirer.destroy()
            finally:
                self._acquirer = None
        if self._harvester is not None:
            self._harvester.reset()
            self._harvester = None


def open_source(spec: str, *, loop: bool = False, capture_factory: Callable | None = None) -> Source:
    """Build (not yet open) the source a spec string names; SourceError when it names nothing usable.

    An existing file or folder wins over every other reading: a folder named 20240101 or lot!7 is
    replayed, not taken for a camera index or a GStreamer pipeline.
    """
    spec = str(spec).strip()
    if not spec:
        raise SourceError("empty --source; give a camera index, URL, video file, folder, glob or GStreamer pipeline")
    if os.path.exists(spec):  # (False, not an error, for a pipeline too long to be a file name)
        return _path_source(Path(spec), loop, capture_factory)
    if spec.lower().startswith("file://"):
        path = _file_url_path(spec)
        if not os.path.exists(path):
            raise SourceError(f"source not found: {path} (from --source {spec})")
        return _path_source(path, loop, capture_factory)
    if spec.isdigit():
        return VideoCaptureSource(int(spec), kind="camera", capture_factory=capture_factory)
    if spec.startswith("genicam:"):
        cti, _, index = spec[len("genicam:"):].partition("#")
        return HarvesterSource(cti, int(index) if index.isdigit() else 0)
    if URL.match(spec):
        scheme = spec.split("://", 1)[0].lower()
        if scheme not in ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"):
            raise SourceError(f"unsupported URL scheme '{scheme}' in --source {spec} (rtsp, http(s), udp, tcp, srt, file)")
        return VideoCaptureSource(spec, kind="stream", capture_factory=capture_factory)
    if "!" in spec:
        return VideoCaptureSource(spec, kind="gstreamer", capture_factory=capture_factory)
    if GLOB_CHARS & set(spec):
        files = [Path(p) for p in sorted(glob.glob(spec)) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        return FolderSource(files, loop=loop, name=spec)
    raise SourceError(f"source not found: {spec} (not a camera index, URL, GStreamer pipeline, file, folder or glob)")


def _file_url_path(spec: str) -> Path:
    """file:///data/parts.avi (or file://localhost/...) -> /data/parts.avi: a file, replayed, not a live stream."""
    url = urllib.parse.urlsplit(spec)
    if url.netloc not in ("", "localhost"):
        raise SourceError(f"--source {spec}: file URLs on another host are not supported; mount it and give the path")
    return Path(urllib.request.url2pathname(url.path))


def _path_source(path: Path, loop: bool, capture_factory: Callable | None) -> Source:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return FolderSource(files, loop=loop, name=str(path))
    if not path.is_file():
        raise SourceError(f"--source {path}: neither a file nor a folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FolderSource([path], loop=loop, name=str(path))
    return VideoCaptureSource(str(path), kind="video", loop=loop, capture_factory=capture_factory)


class CaptureThread(threading.Thread):
    """Reads an opened source into a LatestFrameQueue, stamping each frame, until stopped or EOF.

    A live source that stops delivering is closed and re-opened with exponential back-off
    (``backoff_s`` doubling up to ``backoff_max_s``); each successful re-open counts in
    ``reconnects``. ``max_reconnect_attempts`` (None = forever) bounds the retries. The back-off
    and the attempt count start over only when a frame arrives: a camera that opens but sends
    nothing is retried ever more slowly, and counts towards the bound.
    """

    def __init__(self, source: Source, queue: LatestFrameQueue, *, backoff_s: float = 0.1,
                 backoff_max_s: float = 5.0, max_reconnect_attempts: int | None = None):
        super().__init__(name=f"capture[{source.name}]", daemon=True)
        self.source = source
        self.queue = queue
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self.frames_read = 0
        self.reconnects = 0
        self.reconnect_attempts = 0
        self._delay = backoff_s   # next back-off; reset when a frame arrives
        self._attempts = 0        # attempts since the last frame
        self.ended = ""   # why the thread stopped: "eof", "stopped", "gave up: ...", "error: ..."
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.queue.close()

    def run(self) -> None:
        seq = 0
        try:
            while not self._stop_event.is_set():
                try:
                    img = self.source.read()
                except SourceLost as lost:
                    log.warning("%s; reconnecting", lost)
                    if not self._reconnect():
                        break
                    continue
                if img is IDLE:
                    continue
                if img is None:
                    self.ended = "eof"
                    break
                frame = stamp(seq, img, bgr=self.source.bgr, origin=self.source.origin)
                seq += 1
                self.frames_read += 1
                self._delay, self._attempts = self.backoff_s, 0
                if not self.queue.put(frame):
                    break
        except Exception as err:  # never die silently: the loop reports why capture ended
            log.error("capture from %s failed: %s", self.source.name, err, exc_info=log.isEnabledFor(logging.DEBUG))
            self.ended = f"error: {err}"
        finally:
            self.ended = self.ended or "stopped"
            self.queue.close()
            self.source.close()

    def _reconnect(self) -> bool:
        while not self._stop_event.is_set():
            if self.max_reconnect_attempts is not None and self._attempts >= self.max_reconnect_attempts:
                self.ended = f"gave up after {self._attempts} reconnect attempts"
                log.error("%s: %s", self.source.name, self.ended)
                return False
            if self._stop_event.wait(self._delay):
                return False
            self._attempts += 1
            self.reconnect_attempts += 1
            self._delay = min(self._delay * 2, self.backoff_max_s)  # also after an open that then sends nothing
            try:
                self.source.open()
            except Exception as err:
                log.warning("reconnect %d to %s failed (%s); next try in %.2g s", self._attempts, self.source.name, err, self._delay)
                continue
            self.reconnects += 1
            log.info("reconnected to %s after %d attempt(s)", self.source.name, self._attempts)
            return True
        return False


def default_queue_policy(source: Source) -> str:
    """Live sources keep only the newest frames; replayed ones are processed frame by frame."""
    return "latest" if source.live else "block"


__all__ = ["Source", "SourceLost", "VideoCaptureSource", "FolderSource", "ArraySource", "HarvesterSource",
           "open_source", "CaptureThread", "default_queue_policy"]
