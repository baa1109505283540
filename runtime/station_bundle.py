"""A station bundle (STATION_DIR from `protospect register`) given where a model is expected.

``resolve(path)`` -> (the graph to load, the bundle's station.json or None). A bundle is checked first
(protospect.station.check_bundle: format version, every file's sha256; an edited or foreign file is
refused naming it), so `serve STATION_DIR` runs exactly what registration measured, at its thresholds.
``apply_line_settings(args)``: the bundle's line settings (station.json "line": trigger mode, Modbus / OPC UA /
MQTT endpoints) fill serve's line flags that the command line left out.
"""
from __future__ import annotations

import logging
from pathlib import Path

from protospect import station
from protospect.conformal import OperatingPoint

log = logging.getLogger(__name__)


def resolve(path) -> tuple[Path, dict | None]:
    path = Path(path)
    if not station.is_bundle(path):
        return path, None
    rec = station.check_bundle(path)
    rec["_dir"] = str(path)  # where it was read from (not a station.json key)
    model = path / str(rec.get("model") or station.MODEL)
    log.info("station bundle %s: %s, registered %s, files verified (sha256)", path, model.name, rec.get("created", "?"))
    return model, rec


def operating_point(rec: dict) -> OperatingPoint:
    return OperatingPoint.from_dict(rec["operating_point"], f"{rec.get('_dir', '.')}/{station.STATION_JSON}")


def apply_line_settings(args) -> dict:
    """Fill serve's line flags the command line left out (``args.trigger`` absent, the others None) from the
    bundle's station.json "line"; afterwards ``args.trigger`` is always set ("free" when neither gives one). The
    bundle's PLC endpoints (modbus, opcua) are taken only when the trigger in force is plc, its trigger_source only
    when it is hardware: ``--trigger free`` on the command line runs the bundle free. Returns what was taken."""
    taken = {}
    model = getattr(args, "model", None)
    if model is not None and station.is_bundle(Path(model)):
        rec = station.read_station(Path(model))  # format and seal; every file is checked when the graph loads
        line = station.line_settings(rec, f"{Path(model) / station.STATION_JSON}")
        trigger = getattr(args, "trigger", None) or line.get("trigger", "free")
        for key, value in line.items():
            if key in ("modbus", "opcua") and trigger != "plc" or key == "trigger_source" and trigger != "hardware":
                continue
            if getattr(args, key, None) is None:
                setattr(args, key, value)
                taken[key] = value
        if taken:
            log.info("line settings from the station bundle %s: %s (a flag on the command line overrides each)", model,
                     " ".join(f"--{k.replace('_', '-')} {v}" for k, v in taken.items()))
    if getattr(args, "trigger", None) is None:
        args.trigger = "free"
    return taken
