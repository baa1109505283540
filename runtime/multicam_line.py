"""serve --config: each camera's own line I/O (issue 18 with issue 17's adapters; docs/integration.md, "Several
cameras").

A camera with ``trigger = "plc"`` gets its own Handshake (runtime/line/handshake.py) and its own Modbus TCP and/or
OPC UA server on the port its table names: the same register map, address space and rules as single-camera
``serve --trigger plc``, one PLC handshake per camera. The station file's ``[line] mqtt`` feeds every camera's
verdicts to one broker, each camera on its own topics (``PREFIX/<station>/<camera>/verdict``, status with a
last will, its own spool in its sink folder). Each camera's counters (runtime/line/status.py) go to its
summary.json ("line"), its tile on the station page and serve's printed summary.

Every server is started before any camera: a port that cannot be bound, or an unreadable users file, is one
line naming the camera and key, and the servers already started are stopped.
"""
from __future__ import annotations

import logging
from pathlib import Path

from protospect.errors import ConfigError
from protospect.runtime.line.status import LineStatus
from protospect.runtime.station_config import CameraConfig, StationConfig

log = logging.getLogger(__name__)


class CameraLine:
    """One camera's handshake (trigger plc: else None), its PLC servers and its counters."""

    def __init__(self, cam: CameraConfig):
        self.camera = cam.name
        self.handshake = None
        if cam.trigger == "plc":
            from protospect.runtime.line.handshake import Handshake
            self.handshake = Handshake()
        self.status = LineStatus(self.handshake)
        self.servers: list = []

    def start(self, cam: CameraConfig, where: str) -> None:
        if cam.opcua is not None:  # the users file first: nothing listens when it cannot be read
            from protospect.runtime.line.opcua import read_users
            users = None if cam.opcua_user is None else _keyed(where, "opcua_user", read_users, cam.opcua_user)
        if cam.modbus is not None:
            from protospect.runtime.line.modbus import ModbusAdapter, parse_modbus
            adapter = ModbusAdapter(self.handshake, *parse_modbus(cam.modbus))
            self.servers.append(_keyed(where, "modbus", adapter.start))
            self.status.add("modbus", adapter)
        if cam.opcua is not None:
            from protospect.runtime.line.opcua import OpcUaAdapter, parse_opcua
            adapter = _keyed(where, "opcua", OpcUaAdapter, self.handshake, *parse_opcua(cam.opcua), users=users)
            self.servers.append(_keyed(where, "opcua", adapter.start))
            self.status.add("opcua", adapter)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []


def _keyed(where: str, key: str, fn, *args, **kwargs):
    """fn(...), its one-line ConfigError (written for serve's flags: '--modbus HOST:PORT: why') said for the key."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as err:
        why = str(err).split(" ", 1)[-1] if str(err).startswith("--") else str(err)  # without the flag's name
        raise ConfigError(f"{where} key '{key}': {why}") from None


def open_lines(cfg: StationConfig) -> dict[str, CameraLine]:
    """camera name -> its CameraLine, every PLC server listening; on a failure all are stopped (ConfigError)."""
    lines: dict[str, CameraLine] = {}
    try:
        for cam in cfg.cameras:
            line = lines[cam.name] = CameraLine(cam)
            line.start(cam, f"{cfg.path}: [[camera]] '{cam.name}'")
    except BaseException:
        close_lines(lines)
        raise
    return lines


def close_lines(lines: dict[str, CameraLine] | None) -> None:
    for line in (lines or {}).values():
        line.stop()


def check_mqtt(cfg: StationConfig, cam: CameraConfig, sink_dir: Path | None) -> None:
    if cfg.mqtt is not None and sink_dir is None:
        raise ConfigError(f"{cfg.path}: [[camera]] '{cam.name}' key 'sink': [line] mqtt needs a sink folder per camera "
                          "(its outage spool lives there): give sink = \"...\" or serve --sink ROOT")


def line_sinks(cfg: StationConfig, cam: CameraConfig, line: CameraLine, sink_dir: Path | None,
               spool_mb: float) -> list:
    """The camera's MQTT feed (``[line] mqtt``), as a sink, its counters added to the camera's LineStatus."""
    if cfg.mqtt is None:
        return []
    from protospect.runtime.line.mqtt import MqttSink, parse_mqtt
    import socket

    host, port, prefix = parse_mqtt(cfg.mqtt)
    station = cfg.station or socket.gethostname() or "station"
    host = f"[{host}]" if ":" in host else host
    sink = MqttSink(f"mqtt://{host}:{port}/{prefix}/{station}", sink_dir, station=cam.name,
                    max_spool_bytes=int(spool_mb * (1 << 20)))
    line.status.add("mqtt", sink)
    return [sink]
