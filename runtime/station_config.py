"""The station configuration file (issue 18): one `[[camera]]` table per camera, validated at start.

    [[camera]]
    name = "left"                       # required, unique across the file
    source = "line_left.mp4"            # required: what `serve --source` takes (file, folder, device index, genicam:...)
    model = "flange.onnx"               # required: ONNX graph, TensorRT engine or station bundle
    threshold = 0.42                    # optional: overrides the model's NG threshold
    trigger = "free"                    # optional: free (default) | plc | hardware, as `serve --trigger`
    sink = "runs/left"                  # optional: this camera's verdict log / NG images folder
    modbus = "127.0.0.1:5021"           # trigger = "plc": this camera's own Modbus TCP handshake server
    opcua = "opc.tcp://127.0.0.1:4841"  # trigger = "plc": ... and/or its own OPC UA server (either or both)
    opcua_user = "users.txt"            # optional with opcua: username:password lines (needed off 127.0.0.1)
    trigger_source = "Line1"            # optional with trigger = "hardware": the camera's trigger line (Line0)

    [line]                              # optional, once per file: the station's MQTT verdict feed
    mqtt = "mqtt://broker:1883/plant"   # every camera publishes to PREFIX/<station>/<camera>/verdict (QoS 1)
    station = "st7"                     # optional: the station's topic level (default: the host name)

A PLC-triggered camera has its own handshake (and its own Modbus / OPC UA port: two cameras never share one),
exactly as single-camera `serve --trigger plc`; its own counters go to its summary and tile.

Every error is one line naming the file, the table (1-based: `[[camera]] #2`, with its name when it has one)
and the key. Relative model and sink paths are taken from the file's folder; source is passed on as written
(serve resolves it as it does --source). `serve --config` (runtime/multicam.py) serves every camera in one process.
Runtime side, so Python 3.10 clean: `tomllib`, or the `tomli` backport on 3.10.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from protospect.errors import ConfigError

REQUIRED = ("name", "source", "model")
OPTIONAL = ("threshold", "trigger", "sink", "modbus", "opcua", "opcua_user", "trigger_source")
TRIGGERS = ("free", "plc", "hardware")
TOP_LEVEL = ("camera", "line")
LINE_KEYS = ("mqtt", "station")


@dataclass(frozen=True)
class CameraConfig:
    name: str
    source: str
    model: Path
    threshold: float | None = None
    trigger: str = "free"
    sink: Path | None = None
    modbus: str | None = None          # [HOST]:PORT, trigger plc
    opcua: str | None = None           # opc.tcp://HOST:PORT, trigger plc
    opcua_user: Path | None = None
    trigger_source: str | None = None  # trigger hardware


@dataclass(frozen=True)
class StationConfig:
    path: Path
    cameras: tuple[CameraConfig, ...]
    mqtt: str | None = None            # [line] mqtt
    station: str | None = None         # [line] station

    def camera(self, name: str) -> CameraConfig:
        return next(c for c in self.cameras if c.name == name)


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10 (JetPack 6)
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("reading a station file on Python 3.10 needs the tomli backport: pip install tomli") from None
    return tomllib


def load_station(path: str | Path) -> StationConfig:
    """Read and validate ``path``; ConfigError (one line) on anything that cannot work."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"station file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read station file {path}: {err}") from None
    return parse_station(text, path)


def parse_station(text: str, path: str | Path = "station.toml") -> StationConfig:
    tomllib = _toml()
    path = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {' '.join(str(err).split())}") from None
    unknown = sorted(set(doc) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key '{unknown[0]}' (a station file holds [[camera]] tables and "
                          "an optional [line] table)")
    mqtt, station = _line(doc.get("line"), path)
    tables = doc.get("camera")
    if tables is None:
        raise ConfigError(f"{path}: no [[camera]] table; give one per camera with name, source and model")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: 'camera' must be an array of tables: write each camera as [[camera]], not [camera]")
    cameras, seen = [], {}
    for index, table in enumerate(tables, start=1):
        cam = _camera(table, path, index)
        if cam.name in seen:
            raise ConfigError(f"{path}: [[camera]] #{index} ('{cam.name}') key 'name': camera name '{cam.name}' is already used by "
                              f"[[camera]] #{seen[cam.name]}; names must be unique")
        seen[cam.name] = index
        cameras.append(cam)
    _check_ports(cameras, path)
    if mqtt is not None:
        for index, cam in enumerate(cameras, start=1):
            if not _TOPIC_LEVEL.match(cam.name):
                raise ConfigError(f"{path}: [[camera]] #{index} ('{cam.name}') key 'name': with [line] mqtt the name is "
                                  "an MQTT topic level: no /, +, # or spaces")
    return StationConfig(path=path, cameras=tuple(cameras), mqtt=mqtt, station=station)


_TOPIC_LEVEL = re.compile(r"[^#+/\s]+$")


def _line(table, path: Path) -> tuple[str | None, str | None]:
    """The optional [line] table -> (mqtt URL, station name)."""
    if table is None:
        return None, None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: 'line' must be a table: write it as [line] with mqtt = \"mqtt://HOST:PORT/PREFIX\"")
    for key, value in table.items():
        if key not in LINE_KEYS:
            raise ConfigError(f"{path}: [line] key '{key}': unknown key (allowed: {', '.join(LINE_KEYS)}; the PLC "
                              "endpoints go in each [[camera]] table)")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: [line] key '{key}': must be a non-empty string")
    if "mqtt" not in table:
        raise ConfigError(f"{path}: [line] key 'mqtt': missing ([line] holds the station's MQTT feed)")
    from protospect.runtime.line.mqtt import parse_mqtt
    try:
        parse_mqtt(table["mqtt"])
    except ConfigError:
        raise ConfigError(f"{path}: [line] key 'mqtt': expected mqtt://HOST[:PORT]/PREFIX (PREFIX without + or #), "
                          f"got {table['mqtt']!r}") from None
    station = table.get("station")
    if station is not None and not _TOPIC_LEVEL.match(station):
        raise ConfigError(f"{path}: [line] key 'station': {station!r} is an MQTT topic level: no /, +, # or spaces")
    return table["mqtt"], station


def _check_ports(cameras: list[CameraConfig], path: Path) -> None:
    """Two PLC endpoints (of one camera or two) on one port cannot both listen: one line naming both."""
    from protospect.runtime.line.modbus import parse_modbus
    from protospect.runtime.line.opcua import parse_opcua

    used: dict[int, tuple[str, str]] = {}
    for index, cam in enumerate(cameras, start=1):
        for key, spec, parse in (("modbus", cam.modbus, parse_modbus), ("opcua", cam.opcua, parse_opcua)):
            if spec is None:
                continue
            port = parse(spec)[1]
            if port in used:
                other, other_key = used[port]
                raise ConfigError(f"{path}: [[camera]] #{index} ('{cam.name}') key '{key}': port {port} is also camera "
                                  f"'{other}''s {other_key} port; each PLC endpoint needs its own port")
            used[port] = (cam.name, key)


def _camera(table: dict, path: Path, index: int) -> CameraConfig:
    name = table.get("name")
    where = f"{path}: [[camera]] #{index}" + (f" ('{name}')" if isinstance(name, str) and name.strip() else "")

    def fail(key: str, why: str):
        raise ConfigError(f"{where} key '{key}': {why}")

    for key in table:
        if key not in REQUIRED + OPTIONAL:
            fail(key, f"unknown key (allowed: {', '.join(REQUIRED + OPTIONAL)})")
    for key in REQUIRED:
        if key not in table:
            fail(key, "missing (every camera needs name, source and model)")
    for key in ("name", "model", "trigger", "sink", "modbus", "opcua", "opcua_user", "trigger_source"):
        if key in table and not isinstance(table[key], str):
            fail(key, f"must be a string, got {_type(table[key])}")
    source = table["source"]
    if isinstance(source, bool) or not isinstance(source, (str, int)):
        fail("source", f"must be a string or a camera index, got {_type(source)}")
    for key in ("name", "model", "sink", "modbus", "opcua", "opcua_user", "trigger_source"):
        if key in table and not table[key].strip():
            fail(key, "is empty")
    if isinstance(source, str) and not source.strip():
        fail("source", "is empty")
    threshold = table.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            fail("threshold", f"must be a number, got {_type(threshold)}")
        if not math.isfinite(threshold):
            fail("threshold", f"must be finite, got {threshold}")
        threshold = float(threshold)
    trigger = table.get("trigger", "free")
    if trigger not in TRIGGERS:
        fail("trigger", f"'{trigger}' is not one of {', '.join(TRIGGERS)}")
    _check_trigger(table, trigger, str(source), fail)
    base = path.parent

    def local(key: str) -> Path | None:
        if key not in table:
            return None
        value = Path(table[key])
        return value if value.is_absolute() else base / value

    return CameraConfig(name=table["name"].strip(), source=str(source), trigger=trigger, threshold=threshold,
                        model=local("model"), sink=local("sink"), modbus=table.get("modbus"), opcua=table.get("opcua"),
                        opcua_user=local("opcua_user"), trigger_source=table.get("trigger_source"))


def _check_trigger(table: dict, trigger: str, source: str, fail) -> None:
    """The trigger mode and the keys that belong to it (one-line errors through ``fail(key, why)``)."""
    from protospect.runtime.line.modbus import parse_modbus
    from protospect.runtime.line.opcua import LOOPBACK, parse_opcua

    for key, parse, example in (("modbus", parse_modbus, '"127.0.0.1:5021"'),
                                ("opcua", parse_opcua, '"opc.tcp://127.0.0.1:4841"')):
        if key not in table:
            continue
        if trigger != "plc":
            fail(key, f"carries the PLC trigger handshake: add trigger = \"plc\" (the trigger is '{trigger}')")
        try:
            parse(table[key])
        except ConfigError:
            fail(key, f"expected {'[HOST]:PORT' if key == 'modbus' else 'opc.tcp://HOST:PORT'}, e.g. {key} = {example}, "
                      f"got {table[key]!r}")
    if trigger == "plc" and "modbus" not in table and "opcua" not in table:
        fail("trigger", "'plc' needs this camera's PLC endpoint: modbus = \"HOST:PORT\" and/or "
                        "opcua = \"opc.tcp://HOST:PORT\" in the same table")
    if "opcua_user" in table and "opcua" not in table:
        fail("opcua_user", "is for the camera's OPC UA server: add opcua = \"opc.tcp://HOST:PORT\"")
    if "opcua" in table and "opcua_user" not in table and parse_opcua(table["opcua"])[0] not in LOOPBACK:
        fail("opcua", "anonymous OPC UA is allowed on 127.0.0.1 only; add opcua_user = \"users.txt\" "
                      "(username:password lines) to bind another address")
    if trigger == "hardware" and not source.strip().startswith("genicam:"):
        fail("trigger", f"'hardware' needs a GenICam camera (source = \"genicam:/path/producer.cti\"), not {source!r}")
    if "trigger_source" in table and trigger != "hardware":
        fail("trigger_source", "sets the camera's hardware trigger line: add trigger = \"hardware\"")


def _type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
