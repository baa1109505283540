"""`protospect serve MODEL --source SRC [--sink DIR] [--view :8080]`: judge every frame, log every verdict.

DIR/verdicts.jsonl gets one line per frame (rejected frames too, with the reason); NG frames are
saved as DIR/ng/ng_<seq>.png with the heatmap (the first free name: an earlier run's image is never
replaced; the verdict line names the file); DIR/summary.json holds the final counters and per-stage
latencies. Ctrl-C or SIGTERM stops after the current frame, flushes and prints stats. A verdict log
that cannot be written stops the run the same way, with exit code 1. With --view, when a finite source
(file, folder) runs out, the page stays up with the last verdict until Ctrl-C / SIGTERM (one line says
so); stopped by --max-frames, a signal or an error, serve exits at once, as it does without --view.

Talking to the line (docs/integration.md; pip install 'protospect[line]'): --trigger plc --modbus HOST:PORT
(or --opcua opc.tcp://HOST:PORT) judges one fresh frame per PLC trigger over Modbus TCP (or OPC UA);
--mqtt mqtt://HOST:PORT/PREFIX feeds every verdict to a broker (needs --sink: the outage spool lives there). Without these flags serve is unchanged.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from protospect.contract import KEY_THRESHOLD
from protospect.errors import ConfigError
from protospect.runtime import line_threshold, station_bundle
from protospect.runtime.backends import CHOICES, select_backend
from protospect.runtime.line.status import LineStatus
from protospect.runtime.operator_view import OperatorView, parse_view
from protospect.runtime.pipeline import Pipeline
from protospect.runtime.report import exit_code, stop_on_signals, summary_text, write_json
from protospect.runtime.sinks import JsonlSink, NgImageSink
from protospect.runtime.sources import open_source
from protospect.runtime.verdict.drift import DEFAULT_WINDOW, DriftWatch

log = logging.getLogger(__name__)


def add_source_arguments(parser: argparse.ArgumentParser, required: bool, model_optional: bool = False) -> None:
    optional = {"nargs": "?"} if model_optional else {}
    parser.add_argument("model", **optional, help="model.onnx, model.engine (with its .json sidecar), a split export folder, or a "
                                      "station bundle from `protospect register` (its thresholds are used)")
    parser.add_argument("--source", required=required, default=None,
                        help="camera index (0), rtsp://... or http://... URL, video file, image folder or glob, "
                             "GStreamer pipeline ending in appsink, or genicam:/path/producer.cti[#N]")
    parser.add_argument("--backend", choices=CHOICES, default="auto", help="force a backend (default: from the model type)")
    parser.add_argument("--loop", action="store_true", help="replay a video file or folder forever")
    parser.add_argument("--queue-size", type=int, default=2,
                        help="frames buffered between capture and inference; live sources drop the oldest (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument("--triton-url", default=None, metavar="HOST:PORT",
                        help="with --backend triton: the Triton server's gRPC address; MODEL is then the model's name there")


def add_threshold_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", default=None, metavar="VALUE|FILE",
                        help="OK/NG threshold instead of the model's own: a number, or a file from `protospect calibrate` "
                             "(checked against the model)")


def open_backend(args: argparse.Namespace):
    """(backend, station.json or None): a station bundle is verified (hashes, format) before its graph loads."""
    url = getattr(args, "triton_url", None)
    if args.backend == "triton" or url is not None:  # MODEL is a name on the server, not a file here
        return select_backend(args.model, args.backend, triton_url=url), None
    model, station = station_bundle.resolve(args.model)
    return select_backend(model, args.backend, threads=args.threads), station


def use_threshold(backend, spec: str | None, station: dict | None = None) -> None:
    """Put the thresholds into the active backend's info (verdicts, operator page, summary): --threshold first,
    else a station bundle's operating point, else the model's own."""
    if spec is None and station is not None:
        op = station_bundle.operating_point(station)
        backend.info = line_threshold.with_operating_point(backend.info, op, f"station bundle {station.get('_dir', '')}")
        log.info("thresholds from the station bundle: NG %.6g, REVIEW %s (%s)", op.ng_threshold,
                 "none" if op.review_threshold is None else f"{op.review_threshold:.6g}", "; ".join(op.describe()))
        return
    backend.info = line_threshold.apply(backend.info, spec)
    if spec is not None:
        log.info("threshold %.6g (%s); the model's own is %s", backend.info.threshold, backend.info.threshold_source,
                 backend.info.props.get(KEY_THRESHOLD, "?"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, required=False, model_optional=True)  # not with --config (checked in run)
    add_threshold_argument(parser)
    station = parser.add_argument_group("several cameras (issue 18; docs/runtime.md, Fleet)")
    station.add_argument("--config", type=Path, default=None, metavar="STATION.toml",
                         help="serve every [[camera]] of a station file in one process (instead of MODEL --source); "
                              "--sink ROOT gives each camera without its own sink ROOT/<name>/")
    station.add_argument("--batch-window-ms", type=float, default=10.0, metavar="MS",
                         help="--config: a batch of the cameras sharing a dynamic-batch model closes when every live "
                              "one has a frame, or MS after its oldest frame was captured (default 10)")
    parser.add_argument("--sink", type=Path, default=None, help="folder for verdicts.jsonl, ng/*.png and summary.json")
    parser.add_argument("--view", default=None, metavar="[127.0.0.1]:PORT", help="serve the live operator page, e.g. --view :8080")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames (default: until the source ends)")
    parser.add_argument("--fsync-every", type=int, default=100, help="fsync the log every N lines (and every second)")
    parser.add_argument("--drift-window", type=int, default=DEFAULT_WINDOW, metavar="N",
                        help=f"drift watch over the last N OK/REVIEW scores (default {DEFAULT_WINDOW}; 0: off); needs "
                             "thresholds from a conformal file or a station bundle")
    line = parser.add_argument_group("line I/O (docs/integration.md)")
    line.add_argument("--trigger", choices=("free", "plc", "hardware"), default=argparse.SUPPRESS,  # absent: not given
                      help="free: judge every frame (default, unless a station bundle's line settings say otherwise; "
                           "each line flag given here overrides the bundle's); plc: one fresh frame per PLC trigger (needs --modbus "
                           "or --opcua); hardware: a GenICam camera in TriggerMode=On, every delivered frame judged")
    for flag, metavar, text in (
        ("--trigger-source", "LINE", "--trigger hardware: the camera's TriggerSource (default Line0)"),
        ("--modbus", "[HOST]:PORT", "Modbus TCP server for the PLC handshake, e.g. 127.0.0.1:5020 (no authentication)"),
        ("--opcua", "opc.tcp://HOST:PORT", "OPC UA server (object Station) for the PLC handshake, e.g. "
                                           "opc.tcp://127.0.0.1:4840; anonymous on 127.0.0.1 only, another address "
                                           "needs --opcua-user"),
        ("--opcua-user", "FILE", "username:password lines: OPC UA sessions must log in (no encryption: "
                                 "docs/integration.md)"),
        ("--mqtt", "mqtt://HOST:PORT/PREFIX", "publish every verdict to PREFIX/<station>/verdict (QoS 1); needs --sink "
                                              "for the spool")):
        line.add_argument(flag, default=None, metavar=metavar, help=text)
    line.add_argument("--station", default=None, help="station name in the MQTT topics (default: the host name)")
    line.add_argument("--mqtt-spool-mb", type=float, default=64, help="bound of the MQTT outage spool (default 64 MB)")


def check_common(args: argparse.Namespace) -> None:
    if args.queue_size < 1:
        raise ConfigError(f"--queue-size {args.queue_size}: must be >= 1 (2 keeps latency at about one frame)")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: must be >= 1")
    if getattr(args, "max_frames", None) is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames {args.max_frames}: must be >= 1")


def make_drift_watch(info, window: int) -> DriftWatch | None:
    """A drift watch over the conformal calibration scores (None: no such scores, or window 0)."""
    op = info.operating_point
    if op is None or window == 0:
        if window and op is None:
            log.info("drift watch off: the thresholds do not come from good calibration scores "
                     "(use a station bundle or a file from `protospect calibrate`)")
        return None
    watch = DriftWatch(op.scores, window=window)
    log.info(watch.describe())
    return watch


class _Signalled:
    """Passed to stop_on_signals: remembers a Ctrl-C / SIGTERM and stops ``target`` (the pipeline), if any."""

    def __init__(self, target=None):
        self.target = target
        self.event = threading.Event()

    def stop(self) -> None:
        self.event.set()
        if self.target is not None:
            self.target.stop()


def keep_page_up(view: OperatorView) -> None:
    """After a finite source ended: the page keeps showing the last verdict until Ctrl-C / SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return  # no signal handler could end the wait (embedded use): stop at once, as before
    print(f"source ended: the operator page stays up at {view.url} with the last verdict; Ctrl-C to quit",
          flush=True)
    waiter = _Signalled()
    with stop_on_signals(waiter):
        while not waiter.event.wait(0.5):
            pass


def check_line(args: argparse.Namespace) -> None:
    """The line flags, checked before anything opens (one-line ConfigError)."""
    if getattr(args, "modbus", None) is not None:
        from protospect.runtime.line.modbus import parse_modbus
        parse_modbus(args.modbus)
        if getattr(args, "trigger", "free") != "plc":
            raise ConfigError("--modbus carries the PLC trigger handshake: add --trigger plc")
    if getattr(args, "opcua", None) is not None:
        from protospect.runtime.line.opcua import check_security, parse_opcua, read_users
        host, _port = parse_opcua(args.opcua)
        if getattr(args, "trigger", "free") != "plc":
            raise ConfigError("--opcua carries the PLC trigger handshake: add --trigger plc")
        check_security(host, None if args.opcua_user is None else read_users(args.opcua_user))
    elif getattr(args, "opcua_user", None) is not None:
        raise ConfigError("--opcua-user is for the OPC UA server: add --opcua opc.tcp://HOST:PORT")
    if getattr(args, "trigger", "free") == "plc" and getattr(args, "modbus", None) is None \
            and getattr(args, "opcua", None) is None:
        raise ConfigError("--trigger plc needs a way for the PLC to trigger: --modbus HOST:PORT or --opcua opc.tcp://HOST:PORT")
    if getattr(args, "trigger", "free") == "hardware" and not str(args.source).strip().startswith("genicam:"):
        raise ConfigError(f"--trigger hardware needs a GenICam camera (--source genicam:/path/producer.cti), not {args.source}")
    if getattr(args, "trigger_source", None) is not None and getattr(args, "trigger", "free") != "hardware":
        raise ConfigError("--trigger-source sets the camera's hardware trigger line: add --trigger hardware")
    if getattr(args, "mqtt", None) is not None:
        from protospect.runtime.line.mqtt import parse_mqtt
        parse_mqtt(args.mqtt)
        if args.sink is None:
            raise ConfigError("--mqtt needs --sink DIR (the spool for broker outages lives there)")
        if not args.mqtt_spool_mb > 0:
            raise ConfigError(f"--mqtt-spool-mb {args.mqtt_spool_mb}: must be > 0")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "config", None) is not None:
        from protospect.runtime.multicam import serve_station
        return serve_station(args)
    if args.model is None or args.source is None:  # a usage error, as argparse would say it (exit 2)
        print(getattr(args, "_usage", "").rstrip() + "\nprotospect serve: error: give MODEL --source SRC (one camera) "
              "or --config STATION.toml", file=sys.stderr)
        return 2
    check_common(args)
    station_bundle.apply_line_settings(args)  # a station bundle's line settings, where no flag is given
    check_line(args)
    if args.drift_window < 0:
        raise ConfigError(f"--drift-window {args.drift_window}: must be >= 0 (0: off)")
    backend, station = open_backend(args)
    source = open_source(args.source, loop=args.loop)
    policy = None
    if getattr(args, "trigger", "free") == "hardware":  # the camera sends one frame per pulse: judge every one
        from protospect.runtime.genicam_trigger import DEFAULT_TRIGGER_SOURCE
        source.trigger_source, policy = args.trigger_source or DEFAULT_TRIGGER_SOURCE, "block"
    view = modbus = opcua = None
    try:
        with backend:
            use_threshold(backend, args.threshold, station)
            info = backend.info
            sinks = []
            if args.sink is not None:
                sinks.append(JsonlSink(args.sink / "verdicts.jsonl", fsync_every_n=args.fsync_every))
                sinks.append(NgImageSink(args.sink / "ng", info.map_range))
            if args.view is not None:
                host, port = parse_view(args.view)
                view = OperatorView(host=host, port=port, threshold=info.threshold, map_range=info.map_range,
                                    backend=backend.name, review_threshold=info.review_threshold).start()
                sinks.append(view)
            handshake = None
            if getattr(args, "trigger", "free") == "plc":
                from protospect.runtime.line.handshake import Handshake
                handshake = Handshake()
                if getattr(args, "modbus", None) is not None:
                    from protospect.runtime.line.modbus import ModbusAdapter, parse_modbus
                    modbus = ModbusAdapter(handshake, *parse_modbus(args.modbus)).start()
                if getattr(args, "opcua", None) is not None:
                    from protospect.runtime.line.opcua import OpcUaAdapter, parse_opcua, read_users
                    users = None if args.opcua_user is None else read_users(args.opcua_user)
                    opcua = OpcUaAdapter(handshake, *parse_opcua(args.opcua), users=users).start()
            line = LineStatus(handshake)  # the adapters' counters: summary.json "line" and the page
            line.add("modbus", modbus)
            line.add("opcua", opcua)
            if getattr(args, "mqtt", None) is not None:
                from protospect.runtime.line.mqtt import MqttSink
                sinks.append(MqttSink(args.mqtt, args.sink, station=args.station,
                                      max_spool_bytes=int(args.mqtt_spool_mb * (1 << 20))))
                line.add("mqtt", sinks[-1])
            if view is not None and line:
                view.line_status = line.snapshot
            drift = make_drift_watch(info, args.drift_window)
            pipeline = Pipeline(backend, source, sinks, queue_size=args.queue_size, policy=policy, max_frames=args.max_frames,
                                progress=sys.stderr.isatty(), drift=drift, trigger=handshake,
                                hardware_trigger=getattr(args, "trigger", "free") == "hardware")
            signalled = _Signalled(pipeline)
            with stop_on_signals(signalled):
                report = pipeline.run()
            if line:
                report["line"] = line.snapshot()
        print(summary_text(report))
        code = exit_code(report, "serve")
        if args.sink is not None:
            try:
                write_json(args.sink / "summary.json", report)
            except OSError as err:  # e.g. the disk that stopped the log is full: the stats above are printed
                if code == 0:  # else the error that stopped the run was already said, in its one line
                    print(f"protospect serve: error: cannot write {args.sink / 'summary.json'}: {err}", file=sys.stderr)
                code = code or 1
            print(f"verdicts: {args.sink / 'verdicts.jsonl'}  NG images: {args.sink / 'ng'}")
        if view is not None and report["capture_ended"] == "eof" and not signalled.event.is_set():
            keep_page_up(view)  # a finite source ran out: the operator still sees the last verdict
    finally:
        if view is not None:
            view.stop()
        if modbus is not None:
            modbus.stop()
        if opcua is not None:
            opcua.stop()
    return code
