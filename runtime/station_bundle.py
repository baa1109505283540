"""A station bundle (STATION_DIR from `protospect register`) given where a model is expected.

``resolve(path)`` -> (the graph to load, the bundle's station.json or None). A bundle is checked first
(protospect.station.check_bundle: format version, every file's sha256; an edited or foreign file is
refused naming it), so `serve STATION_DIR` runs exactly what registration measured, at its thresholds.
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
