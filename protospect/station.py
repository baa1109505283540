"""The station bundle: what `protospect register` writes and `serve` / `bench` / soak read (docs/contracts.md 12).

    STATION_DIR/station.json     FORMAT, FORMAT_VERSION, the operating point, source, shots, hashes, versions
    STATION_DIR/model.onnx       the exported graph (its metadata as in contracts 6)
    STATION_DIR/model_int8.onnx  with --int8
    STATION_DIR/artifact/        the training artifact (contracts 5)
    STATION_DIR/report.html      + report/*.png

station.json may carry "line" (LINE_KEYS): the trigger mode and line endpoints serve uses unless its
command line overrides them. Every file but station.json is listed in ``station.json["files"]`` with its sha256, and station.json
carries ``"sha256"``, the hash of its own other keys (``seal``); ``check_bundle`` refuses a bundle of
another format version, or one whose file (station.json included) is missing or edited, naming the file.
Only the standard library: the torch-free runtime and the torch side both import it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from protospect.errors import ArtifactError
from protospect.files import sha256_file

FORMAT = "protospect-station"
FORMAT_VERSION = 1
STATION_JSON = "station.json"
MODEL = "model.onnx"
MODEL_INT8 = "model_int8.onnx"
ARTIFACT = "artifact"
REPORT = "report.html"

# station.json keys
KEYS = ("format", "format_version", "protospect_version", "created", "operating_point", "source", "shots",
        "calibration_parts", "model", "model_int8", "method", "preset", "seed", "timings_s", "files", "sha256")
# optional station.json key "line": how `serve STATION_DIR` talks to the line unless its command line says
# otherwise (docs/integration.md). Values are serve's flag values, as strings: trigger free | plc | hardware,
# trigger_source (--trigger-source), modbus ([HOST]:PORT), opcua (opc.tcp://HOST:PORT), mqtt
# (mqtt://HOST[:PORT]/PREFIX), station (the MQTT station name). No secret: an OPC UA users file stays on the
# station (--opcua-user FILE at serve).
LINE = "line"
LINE_KEYS = ("trigger", "trigger_source", "modbus", "opcua", "mqtt", "station")
TRIGGERS = ("free", "plc", "hardware")
# optional station.json key: what pcsnet geometry=auto chose at registration (input size, each candidate's
# planted-defect AUROC on the held-out good parts), as the artifact's meta records it
GEOMETRY_CHOICE = "geometry_choice"
# optional station.json key: whether pcsnet image_branch=auto added the global branch to the image score (rule v13),
# with both candidates' planted-defect AUROC
IMAGE_BRANCH_CHOICE = "image_branch_choice"
# operating_point keys (written by protospect.conformal.OperatingPoint.to_dict)
OPERATING_POINT_KEYS = ("ng_threshold", "review_threshold", "frr", "review_frr", "n", "certified",
                        "certified_frr", "certified_review_frr", "scores")


def hash_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except station.json, keyed by POSIX relative path."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() != STATION_JSON}


def _record_sha256(rec: dict) -> str:
    body = {k: v for k, v in rec.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode("utf-8")).hexdigest()


def seal(rec: dict) -> dict:
    """``rec`` with "sha256" = the hash of its other keys (canonical JSON): an edit to station.json shows."""
    return {**{k: v for k, v in rec.items() if k != "sha256"}, "sha256": _record_sha256(rec)}


def is_bundle(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / STATION_JSON).is_file()


def read_station(folder: Path) -> dict:
    """station.json of ``folder``, format and version checked (ArtifactError naming the file)."""
    path = Path(folder) / STATION_JSON
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable station file: {err}") from err
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a protospect station file (format {FORMAT}); make one with `protospect register`")
    if rec.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: station format_version {rec.get('format_version')!r} but this protospect reads "
                            f"{FORMAT_VERSION}; register the part again with this protospect")
    missing = [k for k in KEYS if k not in rec]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}; register the part again")
    if rec["sha256"] != _record_sha256(rec):
        raise ArtifactError(f"station bundle {Path(folder)}: {STATION_JSON} was changed after registration (its sha256 "
                            "does not match its content); register the part again")
    return rec


def line_settings(rec: dict, where: str = STATION_JSON) -> dict:
    """station.json's "line" settings ({} when it has none), shape checked (ArtifactError naming the key); what
    the values mean is checked where they are used (serve's line flags)."""
    line = rec.get(LINE) or {}
    if not isinstance(line, dict):
        raise ArtifactError(f"{where}: \"{LINE}\" must be an object of serve's line settings")
    for key, value in line.items():
        if key not in LINE_KEYS:
            raise ArtifactError(f"{where}: \"{LINE}\" has unknown key {key!r} (known: {', '.join(LINE_KEYS)})")
        if not isinstance(value, str) or not value.strip():
            raise ArtifactError(f"{where}: \"{LINE}\".{key} must be a non-empty string")
    if line.get("trigger", "free") not in TRIGGERS:
        raise ArtifactError(f"{where}: \"{LINE}\".trigger {line['trigger']!r} is not one of {', '.join(TRIGGERS)}")
    return dict(line)


def check_bundle(folder: Path) -> dict:
    """station.json of a bundle whose every listed file is present and hashes as recorded; else ArtifactError
    naming the file. A file in the folder that station.json does not list is refused too (an added graph)."""
    folder = Path(folder)
    rec = read_station(folder)
    files = rec["files"]
    if not isinstance(files, dict) or MODEL not in files:
        raise ArtifactError(f"{folder / STATION_JSON}: its files list lacks {MODEL}; register the part again")
    found = hash_files(folder)
    for name, want in files.items():
        if name not in found:
            raise ArtifactError(f"station bundle {folder}: {name} is missing (listed in {STATION_JSON})")
        if found[name] != want:
            raise ArtifactError(f"station bundle {folder}: {name} was changed after registration (sha256 "
                                f"{found[name][:12]}... vs {want[:12]}... recorded); register the part again")
    extra = sorted(set(found) - set(files))
    if extra:
        raise ArtifactError(f"station bundle {folder}: {extra[0]} is not part of the registered bundle"
                            f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}; remove it or register again")
    return rec
