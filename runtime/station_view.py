"""The live page of a multi-camera station (serve --config --view :PORT): one tile per camera.

  GET /                       runtime/web/station.html: a tile per camera (verdict, score, counters, its
                              status, and why when it failed), polling /station.json
  GET /station.json           {"cameras": [{"name", "status", "reason", "state"}]}: each camera's state is
                              its operator view's /state.json (without the history)
  GET /cam/<i>/state.json     camera i's full state (as the single-camera page's /state.json)
  GET /cam/<i>/frame.jpg?seq=N  camera i's frame N with its heatmap (the single-camera rules: exactly frame N
                              or 404, its seq in X-Frame-Seq)

Each camera's sink is an OperatorView that is never started itself: this server answers for all of them.
Loopback only, like the single-camera page.
"""
from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler

from protospect.errors import ConfigError
from protospect.runtime.operator_view import LOOPBACK, WEB_DIR, OperatorView, serve_http, stop_http
from protospect.runtime.sinks import json_text

log = logging.getLogger(__name__)


class StationView:
    def __init__(self, host: str = "127.0.0.1", port: int = 8080):
        if host not in LOOPBACK:
            raise ConfigError(f"operator page host {host}: serves on 127.0.0.1 only")
        self.host, self.port = "127.0.0.1", port
        self.names: list[str] = []
        self.views: list[OperatorView] = []
        self.lanes: list = []  # runtime.multicam.Lane, same order: status and reason
        self._server = None

    def add_camera(self, name: str, info, backend: str) -> OperatorView:
        view = OperatorView(port=0, threshold=info.threshold, map_range=info.map_range, backend=backend,
                            review_threshold=info.review_threshold)
        self.names.append(name)
        self.views.append(view)
        return view

    def start(self) -> "StationView":
        self._server = serve_http(self._handle, self.host, self.port, "station page", "station-view")
        self.port = self._server.server_address[1]
        log.info("station page: %s (%d cameras)", self.url, len(self.views))
        return self

    def stop(self) -> None:
        self._server = stop_http(self._server)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def state(self) -> dict:
        cams = []
        for i, (name, view) in enumerate(zip(self.names, self.views)):
            lane = self.lanes[i] if i < len(self.lanes) else None
            s = view.state()
            s.pop("history", None)
            cams.append({"index": i, "name": name, "status": getattr(lane, "status", "starting"),
                         "reason": getattr(lane, "reason", ""), "state": s})
        return {"cameras": cams}

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path, _, query = req.path.partition("?")
        if path in ("/", "/index.html", "/station.json"):
            if path == "/station.json":
                body, ctype = json_text(self.state()).encode(), "application/json"
            else:
                body, ctype = (WEB_DIR / "station.html").read_bytes(), "text/html; charset=utf-8"
            req.send_response(200)
            req.send_header("Content-Type", ctype)
            req.send_header("Content-Length", str(len(body)))
            req.send_header("Cache-Control", "no-store")
            req.end_headers()
            try:
                req.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        parts = path.split("/")  # ["", "cam", "<i>", "state.json" | "frame.jpg"]
        if len(parts) == 4 and parts[1] == "cam" and parts[2].isdigit() and int(parts[2]) < len(self.views) \
                and parts[3] in ("state.json", "frame.jpg"):
            req.path = "/" + parts[3] + ("?" + query if query else "")
            self.views[int(parts[2])]._handle(req)  # the single-camera endpoint, unchanged
            return
        req.send_error(404)
