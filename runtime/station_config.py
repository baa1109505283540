"""The station configuration file (issue 18): one `[[camera]]` table per camera, validated at start.

    [[camera]]
    name = "left"                       # required, unique across the file
    source = "line_left.mp4"            # required: what `serve --source` takes (file, folder, device index, genicam:...)
    model = "flange.onnx"               # required: ONNX graph, TensorRT engine or station bundle
    threshold = 0.42                    # optional: overrides the model's NG threshold
    trigger = "free"                    # optional: free (default) | plc | hardware, as `serve --trigger`
    sink = "runs/left"                  # optional: this camera's verdict log / NG images folder

Every error is one line naming the file, the table (1-based: `[[camera]] #2`, with its name when it has one)
and the key. Relative model and sink paths are taken from the file's folder; source is passed on as written
(serve resolves it as it does --source). `serve --config` (runtime/multicam.py) serves every camera in one process.
Runtime side, so Python 3.10 clean: `tomllib`, or the `tomli` backport on 3.10.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from protospect.errors import ConfigError

REQUIRED = ("name", "source", "model")
OPTIONAL = ("threshold", "trigger", "sink")
TRIGGERS = ("free", "plc", "hardware")
TOP_LEVEL = ("camera",)


@dataclass(frozen=True)
class CameraConfig:
    name: str
    source: str
    model: Path
    threshold: float | None = None
    trigger: str = "free"
    sink: Path | None = None


@dataclass(frozen=True)
class StationConfig:
    path: Path
    cameras: tuple[CameraConfig, ...]

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
        raise ConfigError(f"{path}: unknown top-level key '{unknown[0]}' (a station file holds [[camera]] tables only)")
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
    return StationConfig(path=path, cameras=tuple(cameras))


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
    for key in ("name", "model", "trigger", "sink"):
        if key in table and not isinstance(table[key], str):
            fail(key, f"must be a string, got {_type(table[key])}")
    source = table["source"]
    if isinstance(source, bool) or not isinstance(source, (str, int)):
        fail("source", f"must be a string or a camera index, got {_type(source)}")
    for key in ("name", "model", "sink"):
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
    base = path.parent
    model = Path(table["model"])
    sink = Path(table["sink"]) if "sink" in table else None
    return CameraConfig(name=table["name"].strip(), source=str(source), trigger=trigger, threshold=threshold,
                        model=model if model.is_absolute() else base / model,
                        sink=None if sink is None else sink if sink.is_absolute() else base / sink)


def _type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
