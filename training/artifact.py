"""The artifact directory: the only thing training hands to export (docs/contracts.md section 5).

ART/manifest.json  format, version, method, preset, meta, calibration, shots, seed, data, library
                   versions, and the sha256 of every other file
ART/weights.pt     the AnomalyModel's state_dict (prototype bank included as a buffer)

Loading re-hashes every file and rebuilds the model from ``meta`` through the method registry
(each method module has ``build(meta)``), so neither the shots nor the backbone's weight source
are needed to load. The manifest also carries ``content_sha256``, a hash of its own other fields,
so an edited threshold or config is caught just like an edited weight file.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
from pathlib import Path

import numpy as np
import torch

from protospect import __version__
from protospect.errors import ArtifactError, ConfigError
from protospect.files import sha256_file, write_atomic

FORMAT = "protospect-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"


def artifact_sha256(art_dir) -> str:
    """Identity of an artifact: sha256 of its manifest.json (which lists every file's hash)."""
    path = Path(art_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} not found: not an artifact directory (make one with `protospect train`)")
    return sha256_file(path)


def _content_sha256(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "content_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _library_versions() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("torchvision", "timm"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def _jsonable(obj):
    """Tuples -> lists, numpy scalars -> Python, Paths -> str, so the manifest round-trips exactly."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_artifact(model, out_dir, *, shots, seed: int, data: dict, extra: dict | None = None) -> Path:
    """Write ``model`` (an AnomalyModel with ``meta`` and ``calibration``) to ``out_dir``; returns the directory.

    ``shots``: the shot file names (or paths; only names are kept); ``data``: {"root", "category"};
    ``extra``: further manifest keys (e.g. train_seconds) that never change the meaning of the others.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"artifact output {out} exists and is not a directory; choose another --out")
    if not getattr(model, "calibration", None) or "threshold" not in model.calibration:
        raise ArtifactError("model has no calibration (threshold); it must come from a method's fit()")
    out.mkdir(parents=True, exist_ok=True)
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    write_atomic(out / WEIGHTS, weights.getvalue())  # a kill mid-save leaves the old file or none, never half
    meta = model.meta
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "protospect_version": __version__,
        "method": meta["method"],
        "preset": meta["preset"],
        "meta": meta,
        "calibration": model.calibration,
        "shots": [Path(s).name for s in shots],
        "K": len(shots),
        "seed": int(seed),
        "data": data,
        "versions": _library_versions(),
        "files": {WEIGHTS: sha256_file(out / WEIGHTS)},
        **(extra or {}),
    }
    manifest = _jsonable(manifest)
    manifest["content_sha256"] = _content_sha256(manifest)
    write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return out


def read_manifest(art_dir) -> dict:
    """manifest.json after the format/version/self-hash checks (no file hashing, no torch load)."""
    art = Path(art_dir)
    if not art.is_dir():
        raise ArtifactError(f"artifact directory not found: {art} (make one with `protospect train ... --out {art}`)")
    path = art / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: not an artifact directory, or an incomplete copy")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); the artifact is corrupt, re-run `protospect train`") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path} is not a protospect artifact manifest (format {found!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {manifest.get('format_version')!r}; this protospect ({__version__}) reads "
            f"version {FORMAT_VERSION}: re-train with this version or use the protospect that wrote it")
    if manifest.get("content_sha256") != _content_sha256(manifest):
        raise ArtifactError(f"{path} was edited after it was written (its content hash does not match); re-run `protospect train`")
    return manifest


def verify_files(art_dir, manifest: dict) -> None:
    """Every file the manifest lists exists and has the recorded sha256; ArtifactError naming the first that does not."""
    art = Path(art_dir)
    files = manifest.get("files") or {}
    if WEIGHTS not in files:
        raise ArtifactError(f"{art / MANIFEST} lists no {WEIGHTS}; the artifact is incomplete")
    for name, expected in files.items():
        path = art / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing (listed in {MANIFEST}); copy the whole artifact directory")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{path} does not match the sha256 in {MANIFEST}: the file was edited or corrupted")


def load_artifact(art_dir):
    """(model in eval mode with ``meta`` and ``calibration``, manifest) after checking every hash."""
    from protospect.training.methods import get_method  # noqa: PLC0415 (imports the registry lazily)

    art = Path(art_dir)
    manifest = read_manifest(art)
    verify_files(art, manifest)
    try:
        method = get_method(manifest["method"])
    except ConfigError as err:
        raise ArtifactError(f"{art / MANIFEST}: {err}") from err
    if not hasattr(method, "build"):
        raise ArtifactError(f"{art / MANIFEST}: method '{manifest['method']}' cannot be loaded (its module has no build(meta))")
    model = method.build(manifest["meta"])
    try:
        state = torch.load(art / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as err:
        # torch's message spans lines (the header, then the missing / unexpected keys): keep it on one line and
        # short, since the keys are what tell an engineer which version wrote the artifact
        detail = " ".join(str(err).split()) or type(err).__name__
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ArtifactError(f"{art / WEIGHTS} does not fit a {manifest['method']} model of this meta: {detail}") from err
    model.calibration = manifest["calibration"]
    model.eval()
    return model, manifest
