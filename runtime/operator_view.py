"""The live operator page: stdlib http.server on a thread, serving runtime/web/ and two endpoints.

  GET /            the page (runtime/web/index.html + app.js): verdict, frame with heatmap,
                   rolling score and latency plots drawn client-side
  GET /state.json  latest verdict, score, threshold, counters and the recent history (strict JSON:
                   a NaN/inf score is null, with score_not_finite saying which)
  GET /frame.jpg   the latest frame with its heatmap (encoded on request, at most once per frame)

It is a Sink: the pipeline hands it each result; the loop never waits on a browser. close()
(called when the run ends) only marks the run finished, so the last verdict stays visible;
stop() shuts the server down. Serves on 127.0.0.1 only: the station is not a web server.
"""
from __future__ import annotations

import collections
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2

from protospect.errors import ConfigError
from protospect.runtime.sinks import Result, Sink, heat_overlay, json_text, not_finite

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "application/javascript; charset=utf-8")}
LOOPBACK = ("127.0.0.1", "localhost")


def parse_view(spec: str) -> tuple[str, int]:
    """--view ":8080" or "127.0.0.1:8080" -> ("127.0.0.1", 8080); anything not loopback is refused."""
    host, _, port = str(spec).rpartition(":")
    host = host or "127.0.0.1"
    if host not in LOOPBACK:
        raise ConfigError(f"--view {spec}: the operator page serves on 127.0.0.1 only "
                          "(reach it from elsewhere through an SSH tunnel: ssh -L 8080:127.0.0.1:8080 station)")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--view {spec}: expected [127.0.0.1]:PORT, e.g. --view :8080")
    return "127.0.0.1", int(port)


class OperatorView(Sink):
    def __init__(self, *, port: int = 8080, host: str = "127.0.0.1", threshold: float, map_range: tuple[float, float],
                 history: int = 300, jpeg_width: int = 640, backend: str = ""):
        if host not in LOOPBACK:
            raise ConfigError(f"operator page host {host}: serves on 127.0.0.1 only")
        self.host, self.port = "127.0.0.1", port
        self.threshold = threshold
        self.map_range = map_range
        self.jpeg_width = jpeg_width
        self.backend = backend
        self._lock = threading.Lock()
        self._history = collections.deque(maxlen=history)
        self._latest: Result | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._counters: dict = {}
        self._last_reject = ""
        self._running = True
        self._server = None
        self._thread = None

    # -- server ---------------------------------------------------------------------------------
    def start(self) -> "OperatorView":
        view = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                view._handle(self)

            def log_message(self, fmt, *args):  # keep the operator's console for verdicts
                log.debug("view: " + fmt, *args)

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as err:
            raise ConfigError(f"cannot serve the operator page on {self.host}:{self.port}: {err} "
                              "(port in use? pick another with --view :PORT)") from err
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="operator-view", daemon=True)
        self._thread.start()
        log.info("operator page: http://%s:%d/", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # -- sink -----------------------------------------------------------------------------------
    def write(self, result: Result) -> None:
        with self._lock:
            self._latest = result
            self._counters = result.counters
            self._history.append((result.seq, round(result.score, 6), round(result.ms.get("host_to_host", 0.0), 3),
                                  result.verdict))

    def reject(self, record: dict) -> None:
        with self._lock:
            self._last_reject = f"#{record.get('seq')}: {record.get('reason', '')}"

    def close(self) -> None:
        with self._lock:
            self._running = False

    # -- handlers -------------------------------------------------------------------------------
    def state(self) -> dict:
        with self._lock:
            r = self._latest
            hist = list(self._history)
            return {
                "running": self._running, "backend": self.backend, "threshold": self.threshold,
                "map_range": list(self.map_range),
                "seq": None if r is None else r.seq, "verdict": None if r is None else r.verdict,
                "score": None if r is None else r.score, "score_not_finite": None if r is None else not_finite(r.score),
                "t_wall": None if r is None else r.t_wall,
                "ms": {} if r is None else r.ms, "counters": self._counters, "last_reject": self._last_reject,
                "history": {"seq": [h[0] for h in hist], "score": [h[1] for h in hist],
                            "latency_ms": [h[2] for h in hist], "verdict": [h[3] for h in hist]},
            }

    def frame_jpeg(self) -> bytes | None:
        with self._lock:
            r = self._latest
            if r is None:
                return None
            if self._jpeg is not None and self._jpeg[0] == r.seq:
                return self._jpeg[1]
        img = heat_overlay(r.rgb, r.anomaly_map, self.map_range)
        h, w = img.shape[:2]
        if w > self.jpeg_width:
            img = cv2.resize(img, (self.jpeg_width, max(1, round(h * self.jpeg_width / w))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        data = buf.tobytes() if ok else None
        with self._lock:
            self._jpeg = (r.seq, data)
        return data

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path in STATIC:
            name, ctype = STATIC[path]
            body = (WEB_DIR / name).read_bytes()
        elif path == "/state.json":
            body, ctype = json_text(self.state()).encode(), "application/json"  # NaN would break r.json()
        elif path == "/frame.jpg":
            body, ctype = self.frame_jpeg(), "image/jpeg"
            if body is None:
                req.send_error(404, "no frame yet")
                return
        else:
            req.send_error(404)
            return
        req.send_response(200)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Cache-Control", "no-store")
        req.end_headers()
        try:
            req.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-response; nothing to do
