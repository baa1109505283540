"""The operating point set on the line, from good parts seen by the station's own camera.

Export carries a threshold calibrated on the K registration shots (training/.../threshold.py). On the
line the images differ from the shots (camera, compression, lighting), and new good parts often score
higher than the shots did: the demo's MJPG line video scores 0.14-0.33 where the same parts as PNG
score 0.03-0.07. So the station sets its thresholds from N good parts run past its own camera, by split
conformal prediction (protospect/conformal.py, the one implementation): the NG threshold at a
false-reject rate A and the REVIEW threshold at B, each certified (a new good part scores above it with
probability <= the rate) when N is large enough.

The file (FORMAT, "protospect.line_threshold/2") records the operating point (thresholds, A, B, N, the
sorted good scores) and which model it was measured with (trained artifact, precision, input size,
method); `load` refuses a file from another model, because its scores mean nothing for this one. Files
of the earlier format (/1: one threshold, max + margin x (max - median)) are still read: OK / NG only,
no p-values. ``choose`` keeps that earlier rule for the evaluation's ``*_line`` columns only.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from protospect.errors import ArtifactError, ConfigError
from protospect.files import write_atomic
from protospect.imageio import parse_hw, size_record
from protospect.runtime.model_info import ModelInfo
from protospect.conformal import OperatingPoint

FORMAT = "protospect.line_threshold/2"       # conformal operating point
FORMAT_V1 = "protospect.line_threshold/1"    # one threshold, max + margin x (max - median): still read
MIN_FRAMES = 10          # (earlier rule) fewer good frames say too little about where good parts end
DEFAULT_MARGIN = 0.25
IDENTITY = ("artifact_sha256", "precision", "input_size", "method")  # must match the running model
# "input_size" is written S for a square model (as every file before non-square models) and [H, W] otherwise;
# files are compared in the (H, W) form, so S and [S, S] are the same size.


def choose(scores: np.ndarray, margin: float = DEFAULT_MARGIN) -> float:
    """The earlier rule, max + margin x (max - median) of the good frames' scores: kept only for the
    evaluation's ``*_line`` columns (results.json keeps their meaning); calibrate uses the conformal one."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size < MIN_FRAMES:
        raise ConfigError(f"{s.size} good frames scored; at least {MIN_FRAMES} are needed (50 or more is better)")
    if not np.all(np.isfinite(s)):
        raise ConfigError("a good frame scored NaN or inf: the model or the frames are broken, no threshold set")
    check_margin(margin)
    top, mid = float(s.max()), float(np.median(s))
    return top + margin * (top - mid)


def check_margin(margin: float) -> None:
    if not (margin >= 0 and math.isfinite(margin)):  # (NaN fails both)
        raise ConfigError(f"margin {margin}: must be a finite number >= 0 (default {DEFAULT_MARGIN})")


def identity(info: ModelInfo) -> dict:
    return {"artifact_sha256": info.artifact_sha256, "precision": info.precision,
            "input_size": size_record(info.input_hw), "method": info.method, "graph": info.graph, "preset": info.preset}


def _same(key: str, file_value, model_value) -> bool:
    if key == "input_size":
        return parse_hw(file_value) is not None and parse_hw(file_value) == parse_hw(model_value)
    return file_value == model_value


def record(op: OperatingPoint, info: ModelInfo, model: str, source: str, rejected: int = 0) -> dict:
    """What the threshold file holds: the operating point, how it was set, and on what."""
    s = np.asarray(op.scores, dtype=np.float64)
    return {
        "format": FORMAT,
        "threshold": op.ng_threshold,
        "review_threshold": op.review_threshold,
        "rule": (f"split conformal on {op.n} good frames' scores: NG above the ceil((N+1)(1-A))-th smallest "
                 f"(A = {op.frr:g}), REVIEW above the ceil((N+1)(1-B))-th (B = {op.review_frr})"),
        "operating_point": op.to_dict(),
        "certified_in_words": op.describe(),
        "good_frames": op.n,
        "rejected_frames": int(rejected),
        "scores": {"min": float(s.min()), "median": float(np.median(s)), "p95": op.quantile(0.95),
                   "max": float(s.max())},
        "shot_threshold": info.threshold,
        "good_frames_over_shot_threshold": int(np.sum(s >= info.threshold)),
        "model": identity(info),
        "model_path": str(model),
        "source": str(source),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def check_out(path: Path) -> None:
    """Before any scoring: PATH (and the PNG beside it) can be written, so a run is never lost at the end."""
    path = Path(path)
    for p in (path, path.with_suffix(".png")):
        if p.is_dir():
            raise ConfigError(f"--out {path}: {p} is a directory; name a file, e.g. {p / 'line_threshold.json'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folder that will hold it, or the nearest one that exists (created on save)
    if not folder.is_dir():
        raise ConfigError(f"--out {path}: {folder} is not a folder")
    try:
        tempfile.TemporaryFile(dir=folder).close()  # the real test: root ignores permission bits, not a read-only fs
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot write in {folder}: {err.strerror or err}") from err


def save(path: Path, rec: dict) -> None:
    """Write via a temporary file (protospect.files.write_atomic): a crash or a full disk never leaves half
    a threshold file, and an earlier file stays as it was. ConfigError (one line) when it cannot be written."""
    data = (json.dumps(rec, indent=2, allow_nan=False) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as err:
        raise ConfigError(f"cannot write the threshold file {path}: {err.strerror or err}") from err


def load(path: Path, info: ModelInfo) -> dict:
    """A threshold file, checked against the model that will use it; ArtifactError says what differs."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"threshold file not found: {path}") from err
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable threshold file: {err}") from err
    if not isinstance(rec, dict) or rec.get("format") not in (FORMAT, FORMAT_V1):
        raise ArtifactError(f"{path} is not a protospect line threshold file (format {FORMAT}); "
                            "make one with `protospect calibrate`")
    thr = rec.get("threshold")
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise ArtifactError(f"{path}: threshold {thr!r} is not a finite number")
    want, got = rec.get("model"), identity(info)
    if not isinstance(want, dict):
        raise ArtifactError(f"{path}: its \"model\" field is {type(want).__name__} {_short(want)}, not the model identity "
                            "`protospect calibrate` writes; recalibrate with `protospect calibrate`")
    differ = [f"{k} {want.get(k)!r} (file) vs {got[k]!r} (model)" for k in IDENTITY
              if not _same(k, want.get(k), got[k])]
    if differ:
        raise ArtifactError(f"{path} was measured with another model: {'; '.join(differ)}. "
                            "Scores of one model say nothing about another: recalibrate with `protospect calibrate`")
    if rec["format"] == FORMAT:
        op = rec.get("operating_point")
        if not isinstance(op, dict):
            raise ArtifactError(f"{path}: no operating point; recalibrate with `protospect calibrate`")
        rec["_operating_point"] = OperatingPoint.from_dict(op, str(path))
    return rec


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def apply(info: ModelInfo, spec: str | None) -> ModelInfo:
    """``--threshold`` for serve/bench: None (the model's own), a number, or a threshold file (a conformal
    file sets both thresholds and the p-values; an earlier file the NG threshold only)."""
    if spec is None:
        return info
    try:
        value = float(spec)
    except ValueError:
        rec = load(Path(spec), info)
        op = rec.get("_operating_point")
        if op is None:
            return replace(info, threshold=float(rec["threshold"]), threshold_source=f"line calibration {spec}",
                           review_threshold=None, operating_point=None)
        return with_operating_point(info, op, f"line calibration {spec}")
    if not math.isfinite(value):
        raise ConfigError(f"--threshold {spec}: must be a finite number or a threshold file")
    return replace(info, threshold=value, threshold_source="command line", review_threshold=None, operating_point=None)


def with_operating_point(info: ModelInfo, op: OperatingPoint, source: str) -> ModelInfo:
    """The model's info judged at a conformal operating point: both thresholds, p-values, drift watch."""
    return replace(info, threshold=op.ng_threshold, review_threshold=op.review_threshold, operating_point=op,
                   threshold_source=source)
