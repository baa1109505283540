"""The live operator page: stdlib http.server on a thread, serving runtime/web/ and two endpoints.

  GET /            the page (runtime/web/index.html + app.js): verdict, frame with heatmap,
                   rolling score and latency plots drawn client-side
  GET /state.json  latest verdict (OK / REVIEW / NG), score, p-value, thresholds, counters, the drift
                   watch's state, the line adapters' counters ("line": serve's line flags, else {}) and the
                   recent history (strict JSON: a NaN/inf score is null, with score_not_finite saying which)
  GET /frame.jpg?seq=N  frame N with its heatmap (encoded on request, at most once per frame), its seq in
                   the X-Frame-Seq header. Exactly frame N or nothing: the last KEEP frames are kept, and so
                   are the frames state.json last reported (the page asks for those); a frame no longer kept
                   is 404, never another one in its place. Without ?seq: the latest frame.

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
from urllib.parse import parse_qs

import cv2

from protospect.errors import ConfigError
from protospect.runtime.sinks import Result, Sink, heat_overlay, json_text, not_finite
from protospect.verdict_record import EVENT_DRIFT, EVENT_DRIFT_CLEARED

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "application/javascript; charset=utf-8")}
LOOPBACK = ("127.0.0.1", "localhost")
KEEP = 8  # newest frames kept for /frame.jpg?seq=N (and as many of those state.json reported)


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


def serve_http(handle, host: str, port: int, what: str, thread_name: str) -> ThreadingHTTPServer:
    """A threading HTTP server on its own daemon thread, every GET to ``handle(request)``: the operator page's and
    the station page's. A port that cannot be bound is one ConfigError line naming ``what``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            handle(self)

        def log_message(self, fmt, *args):  # keep the operator's console for verdicts
            log.debug(f"{thread_name}: " + fmt, *args)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as err:
        raise ConfigError(f"cannot serve the {what} on {host}:{port}: {err} "
                          "(port in use? pick another with --view :PORT)") from err
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=thread_name, daemon=True).start()
    return server


def stop_http(server: ThreadingHTTPServer | None) -> None:
    """Stop a server from serve_http (None: nothing to stop); returns None for the caller's attribute."""
    if server is not None:
        server.shutdown()
        server.server_close()


class OperatorView(Sink):
    def __init__(self, *, port: int = 8080, host: str = "127.0.0.1", threshold: float, map_range: tuple[float, float],
                 history: int = 300, jpeg_width: int = 640, backend: str = "", review_threshold: float | None = None):
        if host not in LOOPBACK:
            raise ConfigError(f"operator page host {host}: serves on 127.0.0.1 only")
        self.host, self.port = "127.0.0.1", port
        self.threshold = threshold
        self.review_threshold = review_threshold
        self.map_range = map_range
        self.jpeg_width = jpeg_width
        self.backend = backend
        self._lock = threading.Lock()
        self._history = collections.deque(maxlen=history)
        self._latest: Result | None = None
        self._recent: collections.OrderedDict[int, Result] = collections.OrderedDict()   # newest KEEP written
        self._reported: collections.OrderedDict[int, Result] = collections.OrderedDict()  # last KEEP in state.json
        self._jpegs: dict[int, bytes | None] = {}  # encoded once per kept frame
        self._counters: dict = {}
        self._last_reject = ""
        self._drift: dict | None = None  # the last drift event (None: none yet, or cleared)
        self._drift_events = 0
        self._running = True
        self.line_status = None  # serve: callable -> the line adapters' counters (runtime/line/status.py), or None
        self._server = None

    # -- server ---------------------------------------------------------------------------------
    def start(self) -> "OperatorView":
        self._server = serve_http(self._handle, self.host, self.port, "operator page", "operator-view")
        self.port = self._server.server_address[1]
        log.info("operator page: http://%s:%d/", self.host, self.port)
        return self

    def stop(self) -> None:
        self._server = stop_http(self._server)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # -- sink -----------------------------------------------------------------------------------
    def write(self, result: Result) -> None:
        with self._lock:
            self._latest = result
            self._keep(self._recent, result)
            self._counters = result.counters
            self._history.append((result.seq, round(result.score, 6), round(result.ms.get("host_to_host", 0.0), 3),
                                  result.verdict))

    def _keep(self, table: collections.OrderedDict, result: Result) -> None:
        """Add to a bounded table (lock held); forget the encoded JPEG of a frame neither table keeps."""
        table[result.seq] = result
        table.move_to_end(result.seq)
        while len(table) > KEEP:
            seq, _ = table.popitem(last=False)
            if seq not in self._recent and seq not in self._reported:
                self._jpegs.pop(seq, None)

    def reject(self, record: dict) -> None:
        with self._lock:
            self._last_reject = f"#{record.get('seq')}: {record.get('reason', '')}"

    def event(self, record: dict) -> None:
        with self._lock:
            if record.get("event") == EVENT_DRIFT:
                self._drift = dict(record)
                self._drift_events += 1
            elif record.get("event") == EVENT_DRIFT_CLEARED:
                self._drift = None

    def close(self) -> None:
        with self._lock:
            self._running = False

    # -- handlers -------------------------------------------------------------------------------
    def state(self) -> dict:
        line = self.line_status() if self.line_status is not None else {}
        with self._lock:
            r = self._latest
            hist = list(self._history)
            if r is not None:  # the page will ask for this frame next: keep it however fast frames come
                self._keep(self._reported, r)
            return {
                "running": self._running, "backend": self.backend, "threshold": self.threshold,
                "review_threshold": self.review_threshold, "map_range": list(self.map_range),
                "p_value": None if r is None else r.p_value, "drift": self._drift, "drift_events": self._drift_events,
                "seq": None if r is None else r.seq, "verdict": None if r is None else r.verdict,
                "score": None if r is None else r.score, "score_not_finite": None if r is None else not_finite(r.score),
                "t_wall": None if r is None else r.t_wall,
                "ms": {} if r is None else r.ms, "counters": self._counters, "last_reject": self._last_reject,
                "line": line,
                "history": {"seq": [h[0] for h in hist], "score": [h[1] for h in hist],
                            "latency_ms": [h[2] for h in hist], "verdict": [h[3] for h in hist]},
            }

    def frame_jpeg(self, seq: int | None = None) -> tuple[int, bytes | None] | None:
        """(seq, JPEG) of frame ``seq`` (None: the latest); None when that frame is not (or no longer) kept."""
        with self._lock:
            r = self._latest if seq is None else self._recent.get(seq) or self._reported.get(seq)
            if r is None:
                return None
            if r.seq in self._jpegs:
                return r.seq, self._jpegs[r.seq]
        img = heat_overlay(r.rgb, r.anomaly_map, self.map_range)
        h, w = img.shape[:2]
        if w > self.jpeg_width:
            img = cv2.resize(img, (self.jpeg_width, max(1, round(h * self.jpeg_width / w))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        data = buf.tobytes() if ok else None
        with self._lock:
            if r.seq in self._recent or r.seq in self._reported:
                self._jpegs[r.seq] = data
        return r.seq, data

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path, _, query = req.path.partition("?")
        headers = {}
        if path in STATIC:
            name, ctype = STATIC[path]
            body = (WEB_DIR / name).read_bytes()
        elif path == "/state.json":
            body, ctype = json_text(self.state()).encode(), "application/json"  # NaN would break r.json()
        elif path == "/frame.jpg":
            want = parse_qs(query).get("seq", [None])[-1]
            if want is not None and not want.isdigit():
                req.send_error(400, "seq must be a frame number")
                return
            got = self.frame_jpeg(None if want is None else int(want))
            if got is None or got[1] is None:
                req.send_error(404, "no frame yet" if want is None else f"frame {want} is no longer kept")
                return
            (seq, body), ctype = got, "image/jpeg"
            headers["X-Frame-Seq"] = str(seq)  # the page shows a picture only under the verdict of this seq
        else:
            req.send_error(404)
            return
        req.send_response(200)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Cache-Control", "no-store")
        for k, v in headers.items():
            req.send_header(k, v)
        req.end_headers()
        try:
            req.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-response; nothing to do
