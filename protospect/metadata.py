"""The `protospect.*` metadata_props every exported graph carries (docs/contracts.md section 6).

All values are strings; structured ones are JSON. The runtime reads them to know the input size,
the threshold and the map range without any other file.
"""
from __future__ import annotations

import json
import math

import onnx

from protospect.contract import (FORMAT_VERSION, GRAPHS, INPUT_LAYOUT, KEY_ARTIFACT_SHA256, KEY_FORMAT_VERSION, KEY_GRAPH,
                                 KEY_INPUT_LAYOUT, KEY_INPUT_SIZE, KEY_MAP_RANGE, KEY_MEAN, KEY_METHOD, KEY_PRECISION,
                                 KEY_PRESET, KEY_STD, KEY_THRESHOLD, METADATA_HASH, PREFIX, PRECISIONS, key,
                                 with_metadata_hash)
from protospect.errors import ArtifactError
from protospect.imageio import parse_hw


def input_hw_of(meta: dict) -> tuple[int, int]:
    """The model input (H, W) from a model's meta (int S for S x S, or [H, W])."""
    hw = parse_hw(meta.get("input_size"))
    if hw is None:
        raise ArtifactError(f"model meta has no usable 'input_size' (got {meta.get('input_size')!r}); "
                            "re-train or fix the artifact")
    return hw


def input_hw_of_props(props: dict[str, str], where="the graph") -> tuple[int, int]:
    """(H, W) from a graph's protospect.input_size ("[H, W]")."""
    try:
        h, w = (int(v) for v in json.loads(props[KEY_INPUT_SIZE]))
    except (KeyError, ValueError, TypeError) as err:
        raise ArtifactError(f"{where} has no valid {KEY_INPUT_SIZE} metadata; export it with `protospect export`") from err
    if h <= 0 or w <= 0:
        raise ArtifactError(f"{where} input size {h}x{w} is not positive")
    return h, w


def build_metadata(meta: dict, calibration: dict, *, artifact_sha256: str, precision: str = "fp32",
                   graph: str = "full", extra: dict | None = None) -> dict[str, str]:
    """Return the protospect.* key/value strings for a graph made from a model with ``meta``/``calibration``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    if graph not in GRAPHS:
        raise ValueError(f"graph {graph!r} not in {GRAPHS}")
    missing = [k for k in ("threshold", "map_range") if k not in calibration]
    if missing:
        raise ArtifactError(f"model calibration lacks {missing}; the artifact was saved before fit() calibrated it")
    h, w = input_hw_of(meta)
    lo, hi = (float(v) for v in calibration["map_range"])
    if not math.isfinite(float(calibration["threshold"])):
        raise ArtifactError(f"model calibration threshold {calibration['threshold']} is not finite; re-train the artifact")
    props = {
        KEY_FORMAT_VERSION: FORMAT_VERSION,
        KEY_METHOD: str(meta.get("method", "")),
        KEY_PRESET: str(meta.get("preset", "")),
        KEY_INPUT_LAYOUT: INPUT_LAYOUT,
        KEY_INPUT_SIZE: json.dumps([h, w]),
        KEY_MEAN: json.dumps([float(v) for v in meta["mean"]]),
        KEY_STD: json.dumps([float(v) for v in meta["std"]]),
        KEY_THRESHOLD: repr(float(calibration["threshold"])),
        KEY_MAP_RANGE: json.dumps([lo, hi]),
        KEY_ARTIFACT_SHA256: artifact_sha256,
        KEY_PRECISION: precision,
        KEY_GRAPH: graph,
    }
    for name, value in (extra or {}).items():
        props[key(name)] = value if isinstance(value, str) else json.dumps(value)
    return props


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """Write ``props`` into model.metadata_props, replacing keys already there (others are kept), and
    protospect.metadata_sha256 over the resulting protospect.* keys (docs/contracts.md 6)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props and p.key != METADATA_HASH]
    merged = dict(kept + sorted(props.items()))
    hashed = with_metadata_hash({k: v for k, v in merged.items() if k.startswith(PREFIX)})
    merged[METADATA_HASH] = hashed[METADATA_HASH]
    del model.metadata_props[:]
    for name, value in list(merged.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = name, value
    return model


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The protospect.* props of a graph."""
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
