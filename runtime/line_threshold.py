"""The OK/NG threshold set on the line, from good parts seen by the station's own camera.

Export carries a threshold calibrated on the K registration shots (training/.../threshold.py). On the
line the images differ from the shots (camera, compression, lighting), and new good parts often score
higher than the shots did: the demo's MJPG line video scores 0.14-0.33 where the same parts as PNG
score 0.03-0.07. The fix every inspection engineer knows: run good parts past the camera and set the
threshold just above what they score.

Rule: threshold = max + margin x (max - median) of the good frames' scores. It uses only the good
frames' own spread, so it works for any score scale (PCSNet probabilities, PatchCore distances).
With N good frames, roughly 1 in N + 1 new good parts scores above their max; the margin
keeps most of those OK.

The file records which model it was measured with (trained artifact, precision, input size, method);
`load` refuses a file from another model, because its scores mean nothing for this one.
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
from protospect.runtime.model_info import ModelInfo

FORMAT = "protospect.line_threshold/1"
MIN_FRAMES = 10          # fewer good frames say too little about where good parts end
DEFAULT_MARGIN = 0.25
IDENTITY = ("artifact_sha256", "precision", "input_size", "method")  # must match the running model


def choose(scores: np.ndarray, margin: float = DEFAULT_MARGIN) -> float:
    """max + margin x (max - median) of the good frames' scores."""
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
    return {**{k: getattr(info, k) for k in IDENTITY}, "graph": info.graph, "preset": info.preset}


def record(scores: np.ndarray, margin: float, info: ModelInfo, model: str, source: str, rejected: int = 0) -> dict:
    """What the threshold file holds: the threshold, how it was set, and on what."""
    s = np.asarray(scores, dtype=np.float64)
    thr = choose(s, margin)
    return {
        "format": FORMAT,
        "threshold": thr,
        "rule": f"max + {margin:g} x (max - median) of {s.size} good frames' scores",
        "margin": margin,
        "good_frames": int(s.size),
        "rejected_frames": int(rejected),
        "scores": {"min": float(s.min()), "median": float(np.median(s)), "p99": float(np.percentile(s, 99)),
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
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
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
              if want.get(k) != got[k]]
    if differ:
        raise ArtifactError(f"{path} was measured with another model: {'; '.join(differ)}. "
                            "Scores of one model say nothing about another: recalibrate with `protospect calibrate`")
    return rec


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def apply(info: ModelInfo, spec: str | None) -> ModelInfo:
    """``--threshold`` for serve/bench: None (the model's own), a number, or a threshold file."""
    if spec is None:
        return info
    try:
        value = float(spec)
    except ValueError:
        rec = load(Path(spec), info)
        return replace(info, threshold=float(rec["threshold"]), threshold_source=f"line calibration {spec}")
    if not math.isfinite(value):
        raise ConfigError(f"--threshold {spec}: must be a finite number or a threshold file")
    return replace(info, threshold=value, threshold_source="command line")
