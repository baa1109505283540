"""`protospect serve --config station.toml [--sink ROOT] [--view :8080]`: every camera of a station in one process.

Each `[[camera]]` (runtime/station_config.py) gets its own source and capture thread, its own thresholds and
its own sinks: `sink` from the file, else ROOT/<name>/ with --sink ROOT (verdicts.jsonl, ng/*.png,
summary.json, exactly as single-camera serve writes them), else none. The cameras that name the same model
file (or station bundle) share one loaded model and one inference loop (runtime/batcher.py), which infers
their ready frames together when the graph takes a batch (`export --batch dynamic`); a batch-1 graph, an
engine or a split folder serves its cameras one frame at a time, round-robin. --view serves one page with
a tile per camera (runtime/station_view.py). With --sink, ROOT/summary.json holds every camera's summary and
the batch statistics.

A camera whose source cannot be opened, fails later, or whose verdict log cannot be written stops alone:
the others go on, its tile and summary say why, and serve exits 1 at the end. Models are loaded, and every
camera's settings checked, before anything starts: a missing model is a one-line error (exit 1).

Trigger modes per camera, as single-camera serve: ``plc`` judges exactly one fresh frame per trigger of the
camera's own PLC handshake (Modbus / OPC UA servers: runtime/multicam_line.py; the frame rule is
Pipeline.answers()), ``hardware`` judges every frame a GenICam camera delivers (one per pulse, none dropped).
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from pathlib import Path

from protospect.errors import ConfigError, ProtospectError, SourceError
from protospect.runtime import line_threshold, multicam_line, station_bundle
from protospect.runtime.backends import BackendBase, select_backend
from protospect.runtime.batcher import DEFAULT_WINDOW_MS, SKIPPED, Batcher, Bell, BellQueue
from protospect.runtime.line.handshake import ERR_INTERNAL
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.report import stop_on_signals, summary_text, write_json
from protospect.runtime.sinks import JsonlSink, NgImageSink, SinkError
from protospect.runtime.sources import CaptureThread, default_queue_policy, open_source
from protospect.runtime.station_config import CameraConfig, StationConfig, load_station
from protospect.verdict_record import REJECTED

log = logging.getLogger(__name__)

# serve flags that name one camera's settings: with --config they live in the station file
PER_CAMERA_FLAGS = (("model", "MODEL"), ("source", "--source"), ("threshold", "--threshold"),
                    ("modbus", "--modbus"), ("opcua", "--opcua"), ("opcua_user", "--opcua-user"), ("mqtt", "--mqtt"),
                    ("trigger_source", "--trigger-source"), ("station", "--station"))


class CameraModel:
    """One camera's view of a shared loaded model: the model's backend, the camera's own thresholds."""

    def __init__(self, backend, info):
        self.backend, self.info, self.name = backend, info, backend.name
        self.last_stage_ms, self.last_device_ms = {}, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def describe(self) -> dict:
        return {**self.backend.describe(), **BackendBase.describe(self)}


class Lane:
    """One camera: its source, capture thread, queue and sinks, driven by its model's Batcher."""

    def __init__(self, cam: CameraConfig, model: CameraModel, sinks: list, *, loop: bool, queue_size: int,
                 max_frames: int | None, drift, bell: Bell, sink_dir: Path | None, line=None):
        self.cam, self.name, self.bell, self.sink_dir = cam, cam.name, bell, sink_dir
        self.loop, self.queue_size, self.max_frames = loop, queue_size, max_frames
        self.line = line  # runtime.multicam_line.CameraLine: its handshake (plc) and counters, or None
        self.trigger = line.handshake if line is not None else None
        self.pipeline = Pipeline(model, _Unopened(cam.source), sinks, queue_size=queue_size, drift=drift,
                                 trigger=self.trigger, hardware_trigger=cam.trigger == "hardware")
        if self.trigger is not None:  # an accepted trigger wakes the model's loop at once
            self.trigger.subscribe(lambda snap: snap.busy and bell.ring())
        self.queue: BellQueue | None = None
        self.capture: CaptureThread | None = None
        self.status, self.reason = "starting", ""
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._limit = False

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def expecting(self) -> bool:
        """Wait for this camera's frame in a batch? A PLC camera only while a trigger waits."""
        return self.trigger is None or self.trigger.pending() is not None

    @property
    def wants_frame(self) -> bool:
        """Take from its queue now? A PLC replay keeps its frames queued until a trigger comes (as serve does)."""
        return self.expecting or self.pipeline.source.live

    def start(self) -> None:
        """Open the source and start capturing; a source that cannot open fails this camera only."""
        policy = None
        try:
            source = open_source(self.cam.source, loop=self.loop)
            if self.cam.trigger == "hardware":
                from protospect.runtime.genicam_trigger import DEFAULT_TRIGGER_SOURCE
                if not self.cam.source.strip().startswith("genicam:"):
                    raise SourceError(f"trigger 'hardware' needs a GenICam camera (genicam:...), not {self.cam.source}")
                source.trigger_source, policy = self.cam.trigger_source or DEFAULT_TRIGGER_SOURCE, "block"
            self.pipeline.source = source
            source.open()
        except ProtospectError as err:
            self.fail(f"source failed: {err}")
            return
        self.queue = self.pipeline.queue = BellQueue(self.queue_size, policy or default_queue_policy(source), self.bell)
        self.capture = self.pipeline.capture = CaptureThread(source, self.queue)
        self.status = "running"
        self.capture.start()
        if self.trigger is not None:
            self.trigger.online()

    def take(self, frame):
        judged, trig = self.pipeline.answers(frame)  # PLC: the first frame captured after the trigger only
        if not judged:
            return SKIPPED
        prep = self.pipeline.prepare(frame, trig)
        if self.max_frames is not None and self.pipeline._handled >= self.max_frames:
            self._limit = True
            if prep is None:
                self.finish("max frames")
        return prep

    def deliver(self, prep, result, event) -> None:
        try:
            self.pipeline.deliver(prep, result, event)
        except SinkError as err:
            self.pipeline._sink_failed(err)
            self.finish("sink error")
            return
        if self._limit:
            self.finish("max frames")

    def reject(self, prep, reason: str) -> None:
        """A taken frame that got no verdict (its model failed): logged REJECTED with the reason, never lost."""
        frame = prep.frame
        self.pipeline.counters.rejected[reason] += 1
        record = {"seq": frame.seq, "t_capture_ns": frame.t_capture_ns, "t_wall": round(frame.t_wall, 6),
                  "verdict": REJECTED, "reason": reason}
        if frame.origin:
            record["origin"] = frame.origin
        if prep.trig is not None:
            record["trigger_seq"] = prep.trig.seq
        try:
            for sink in self.pipeline.sinks:
                sink.reject(record)
        except SinkError as err:
            self.pipeline._sink_failed(err)
        if prep.trig is not None and self.trigger is not None:
            self.trigger.fail(ERR_INTERNAL, f"frame {frame.seq}: {reason}")

    def tick(self) -> None:
        try:
            self.pipeline._tick()
        except SinkError as err:
            self.pipeline._sink_failed(err)
            self.finish("sink error")

    def fail(self, reason: str) -> None:
        log.error("camera '%s': %s", self.name, reason)
        with self._lock:
            self.status, self.reason = "failed", reason
        self.pipeline._close_sinks()
        self._done.set()

    def finish(self, why: str) -> None:
        """Stop capturing, record why, close the sinks (once)."""
        with self._lock:
            if self._done.is_set():
                return
            self._done.set()
        if self.trigger is not None:
            self.trigger.offline()  # a trigger still waiting fails: ERROR, "inspection stopped"
        if self.capture is not None:
            self.capture.stop()
            self.capture.join(timeout=10)
            self.pipeline.counters.dropped = self.queue.dropped
            self.pipeline.counters.reconnects = self.capture.reconnects
        self.pipeline._close_sinks()
        ended = self.capture.ended if self.capture is not None else ""
        if self.pipeline.sink_error:
            self.status, self.reason = "failed", f"verdict log failed: {self.pipeline.sink_error}"
        elif why.startswith("inference failed"):
            self.status, self.reason = "failed", why
        elif ended.startswith(("error", "gave up")):
            self.status, self.reason = "failed", f"source stopped: {ended}"
        else:
            self.status, self.reason = "ended", why or ended

    def report(self) -> dict:
        rep = self.pipeline.report()
        if self.line is not None and self.line.status:
            rep["line"] = self.line.status.snapshot()
        return {"camera": self.name, "status": self.status, "reason": self.reason, **rep}


class _Unopened:
    """Stands for a camera's source until it is built (report() names it even when it never opened)."""

    live = False

    def __init__(self, spec: str):
        self.name = str(spec)


class Station:
    """Every camera's lane and every model's loop; stop() (signals) ends them after the frames they hold."""

    def __init__(self, groups: list[tuple[object, list[Lane], Bell]], *, batching: bool = True,
                 window_ms: float = DEFAULT_WINDOW_MS):
        self.groups, self.stop_event = groups, threading.Event()
        self.lanes = [lane for _, lanes, _ in groups for lane in lanes]
        self.batchers = [Batcher(backend, lanes, bell, stop=self.stop_event, window_ms=window_ms,
                                 batched=batching and getattr(backend, "batchable", False) and len(lanes) > 1)
                         for backend, lanes, bell in groups]

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> dict:
        for lane in self.lanes:
            lane.start()
        for b in self.batchers:
            b.start()
        for b in self.batchers:
            while b.is_alive():
                b.join(0.2)
        return self.report()

    def report(self) -> dict:
        return {"cameras": {lane.name: lane.report() for lane in self.lanes},
                "models": [b.stats() for b in self.batchers]}


def check_flags(args) -> None:
    for attr, flag in PER_CAMERA_FLAGS:
        if getattr(args, attr, None) is not None:
            raise ConfigError(f"{flag} is set in the station file ([[camera]] or [line]); drop it when serving --config "
                              f"{args.config}")
    if getattr(args, "trigger", "free") != "free":
        raise ConfigError("--trigger is set per camera in the station file (trigger = ...); drop it with --config")
    if getattr(args, "batch_window_ms", DEFAULT_WINDOW_MS) < 0:
        raise ConfigError(f"--batch-window-ms {args.batch_window_ms}: must be >= 0")


def camera_sink(cam: CameraConfig, root: Path | None) -> Path | None:
    return cam.sink if cam.sink is not None else None if root is None else root / cam.name


def load_models(cfg: StationConfig, backend: str = "auto", threads: int | None = None) -> dict:
    """resolved model path -> (backend, station.json or None), loaded (`with`-entered by the caller)."""
    models = {}
    for cam in cfg.cameras:
        where = f"{cfg.path}: [[camera]] '{cam.name}' key 'model'"
        try:
            graph, station = station_bundle.resolve(cam.model)
            key = str(Path(graph).resolve())
            if key not in models:
                models[key] = (select_backend(graph, backend, threads=threads), station)
        except ProtospectError as err:
            raise ConfigError(f"{where}: {err}") from None
    return models


def camera_info(cam: CameraConfig, base, station: dict | None, where: str):
    if cam.threshold is not None:
        info = line_threshold.apply(base, repr(cam.threshold))
        return dataclasses.replace(info, threshold_source=f"station file {where}")
    if station is not None:
        op = station_bundle.operating_point(station)
        return line_threshold.with_operating_point(base, op, f"station bundle {station.get('_dir', '')}")
    return base


def build(cfg: StationConfig, models: dict, args, view=None, lines: dict | None = None) -> Station:
    """Lanes (with sinks) grouped by model; models must be active (their info is read). ``lines``: each camera's
    CameraLine from multicam_line.open_lines (servers listening); None: not started (handshakes only)."""
    from protospect.runtime.cli_serve import make_drift_watch

    lines = lines if lines is not None else {cam.name: multicam_line.CameraLine(cam) for cam in cfg.cameras}
    sinks_seen: dict[Path, str] = {}
    for cam in cfg.cameras:  # before any log is opened
        sink_dir = camera_sink(cam, args.sink)
        multicam_line.check_mqtt(cfg, cam, sink_dir)
        if sink_dir is not None:
            resolved = sink_dir.resolve()
            if resolved in sinks_seen:
                raise ConfigError(f"{cfg.path}: [[camera]] '{cam.name}' key 'sink': {sink_dir} is also camera "
                                  f"'{sinks_seen[resolved]}''s sink folder; each camera needs its own")
            sinks_seen[resolved] = cam.name
    groups: dict[str, tuple[object, list[Lane], Bell]] = {}
    for cam in cfg.cameras:
        graph, _ = station_bundle.resolve(cam.model)
        key = str(Path(graph).resolve())
        backend, station = models[key]
        info = camera_info(cam, backend.info, station, str(cfg.path))
        sink_dir = camera_sink(cam, args.sink)
        sinks = []
        if sink_dir is not None:
            sinks += [JsonlSink(sink_dir / "verdicts.jsonl", fsync_every_n=args.fsync_every),
                      NgImageSink(sink_dir / "ng", info.map_range)]
        line = lines[cam.name]
        sinks += multicam_line.line_sinks(cfg, cam, line, sink_dir, getattr(args, "mqtt_spool_mb", 64))
        if view is not None:
            sinks.append(view.add_camera(cam.name, info, backend.name))
            if line.status:  # the camera's line counters on its tile
                sinks[-1].line_status = line.status.snapshot
        _, lanes, bell = groups.setdefault(key, (backend, [], Bell()))
        lanes.append(Lane(cam, CameraModel(backend, info), sinks, loop=args.loop, queue_size=args.queue_size,
                          max_frames=args.max_frames, drift=make_drift_watch(info, args.drift_window), bell=bell,
                          sink_dir=sink_dir, line=line))
    return Station(list(groups.values()), batching=not getattr(args, "no_batching", False),
                   window_ms=getattr(args, "batch_window_ms", DEFAULT_WINDOW_MS))


def serve_station(args) -> int:
    """serve --config: load, check, run every camera; 0, or 1 when a camera failed (each said in one line)."""
    from protospect.runtime.cli_serve import check_common, keep_page_up

    check_flags(args)
    check_common(args)
    cfg = load_station(args.config)
    models = load_models(cfg, args.backend, args.threads)
    view = lines = None
    try:
        entered = []
        try:
            for backend, _ in models.values():
                backend.__enter__()
                entered.append(backend)
            lines = multicam_line.open_lines(cfg)  # every PLC server listens before any camera starts
            if args.view is not None:
                from protospect.runtime.operator_view import parse_view
                from protospect.runtime.station_view import StationView
                view = StationView(*parse_view(args.view))
            station = build(cfg, models, args, view, lines)
            if view is not None:
                view.lanes = station.lanes
                view.start()
            for b in station.batchers:
                log.info("model %s: cameras %s, %s", b.backend.describe().get("model", "?"),
                         ", ".join(lane.name for lane in b.lanes),
                         f"batched (window {b.window_ns / 1e6:g} ms)" if b.batched else "one frame at a time")
            with stop_on_signals(station):
                report = station.run()
        finally:
            for backend in reversed(entered):
                backend.__exit__(None, None, None)
        code = finish(report, station, args)
        if view is not None and not station.stop_event.is_set() and \
                all(r["capture_ended"] == "eof" or r["status"] == "failed" for r in report["cameras"].values()):
            keep_page_up(view)
    finally:
        multicam_line.close_lines(lines)
        if view is not None:
            view.stop()
    return code


def finish(report: dict, station: Station, args) -> int:
    """Print each camera's summary, write the summary files; 1 when a camera failed."""
    code = 0
    for lane in station.lanes:
        rep = report["cameras"][lane.name]
        print(f"== camera '{lane.name}': {lane.status}{': ' + lane.reason if lane.reason else ''}")
        print(summary_text(rep))
        if lane.status == "failed":
            print(f"protospect serve: camera '{lane.name}': {lane.reason}", file=sys.stderr)
            code = 1
        if lane.sink_dir is not None:
            try:
                write_json(lane.sink_dir / "summary.json", rep)
            except OSError as err:
                print(f"protospect serve: camera '{lane.name}': cannot write {lane.sink_dir / 'summary.json'}: {err}",
                      file=sys.stderr)
                code = 1
    for stats in report["models"]:
        print(f"model for {', '.join(stats['cameras'])}: {stats['frames']} frames in {stats['batches']} runs "
              f"(mean batch {stats['mean_batch']}, {'batched' if stats['batched'] else 'unbatched'})")
    if args.sink is not None:
        try:
            write_json(args.sink / "summary.json", report)
        except OSError as err:
            print(f"protospect serve: cannot write {args.sink / 'summary.json'}: {err}", file=sys.stderr)
            code = 1
    return code
