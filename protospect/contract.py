"""The graph contract that export writes and every reader checks (docs/contracts.md 6), in one place.

Here, not in export or runtime: export writes these values and the torch-free runtime checks them,
and the runtime imports nothing from export. Only numpy and the standard library.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from protospect.errors import ArtifactError

PREFIX = "protospect."
FORMAT_VERSION = "1"
INPUT_LAYOUT = "NHWC-uint8-RGB"

# ---- tensor names (contracts 6). OUTPUTS are training's ModelOutputs._fields: base.py asserts they agree ----
INPUT = "image"
ANOMALY_MAP, IMAGE_SCORE = OUTPUTS = ("anomaly_map", "image_score")
QUERIES, GUIDE, KNN_SQDIST, BANK = "queries", "guide", "knn_sqdist", "bank"  # the split graphs' tensors


def key(name: str) -> str:
    """The metadata key of ``name``: "threshold" -> "protospect.threshold"."""
    return PREFIX + name


# ---- every protospect.* metadata key a graph carries ----
KEY_FORMAT_VERSION = key("format_version")
KEY_METHOD = key("method")
KEY_PRESET = key("preset")
KEY_INPUT_LAYOUT = key("input_layout")
KEY_INPUT_SIZE = key("input_size")
KEY_MEAN = key("mean")
KEY_STD = key("std")
KEY_THRESHOLD = key("threshold")
KEY_MAP_RANGE = key("map_range")
KEY_ARTIFACT_SHA256 = key("artifact_sha256")
KEY_PRECISION = key("precision")
KEY_GRAPH = key("graph")
KEY_BANK_SHA256 = key("bank_sha256")
KEY_BATCH = key("batch")  # "N" (static batch N > 1) or "dynamic"; absent: batch 1 (every graph before issue 18)
METADATA_HASH = key("metadata_sha256")  # {key: sha256(value)[:16]} of every other protospect.* key

PRECISIONS = ("fp32", "fp16", "int8")
GRAPHS = ("full", "features", "head")

DYNAMIC_BATCH = "dynamic"


def parse_batch(value, where="--batch") -> int | str:
    """"1", "4", 4, "dynamic" -> 1, 4, 4, "dynamic"; anything else raises ValueError naming ``where``."""
    text = str(value).strip().lower()
    if text == DYNAMIC_BATCH:
        return DYNAMIC_BATCH
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f"{where} {value!r} is not a batch size: give a whole number >= 1 or 'dynamic'")


def batch_of(props: dict) -> int | str:
    """The batch a graph was exported with, from its protospect.batch metadata (absent: 1)."""
    found = props.get(KEY_BATCH, props.get("batch"))
    return 1 if found is None else parse_batch(found, KEY_BATCH)


# ---- the engine sidecar (contracts 7): <engine>.json next to the engine ----
SIDECAR_REQUIRED = ("tensorrt_version", "compute_capability", "onnx_metadata", "engine_sha256")


def sidecar_path(engine_path) -> Path:
    """Where build-engine writes, and every reader looks for, an engine's sidecar."""
    return Path(str(engine_path) + ".json")


def version_key(version, parts: int = 3) -> tuple[int, ...]:
    """"10.3.0.30" -> (10, 3, 0) (engines are tied to major.minor.patch of TensorRT); a piece like "3rc1"
    counts its digits; ``parts`` = 2 gives (major, minor)."""
    out = []
    for piece in str(version).split(".")[:parts]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out + [0] * (parts - len(out)))


def normalise_cc(cc) -> str:
    """8.7, "8.7", [8, 7], "sm_87" -> "8.7"."""
    if isinstance(cc, (list, tuple)):
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip().lower().replace("sm_", "")
    if "." not in text and text.isdigit() and len(text) >= 2:
        text = f"{text[:-1]}.{text[-1]}"
    return text


def check_contract(props: dict, where) -> None:
    """Refuse metadata of another format version or input layout (found vs expected), or none at all.

    ``props``: the graph's metadata, keys with or without the ``protospect.`` prefix.
    """
    if not props:
        raise ArtifactError(f"{where} carries no protospect.* metadata; export it with `protospect export`")
    for name, want in (("format_version", FORMAT_VERSION), ("input_layout", INPUT_LAYOUT)):
        found = props.get(key(name), props.get(name))
        if found is None:
            raise ArtifactError(f"{where} lacks {key(name)} ({name} none but this protospect reads {want!r}); "
                                "it was not written by `protospect export` (re-export the artifact)")
        if str(found) != want:
            raise ArtifactError(f"{where} has {key(name)} {str(found)!r} but this protospect reads {want!r}; "
                                "re-export it with this protospect (`protospect export`)")
    check_metadata_hash(props, where)


def _prefixed(props: dict) -> dict[str, str]:
    """The protospect.* keys of ``props``; a dict written without the prefix counts whole (check_contract's rule)."""
    if any(k.startswith(PREFIX) for k in props):
        return {k: str(v) for k, v in props.items() if k.startswith(PREFIX)}
    return {key(k): str(v) for k, v in props.items()}


def metadata_sha256(props: dict) -> str:
    """The value export stores under protospect.metadata_sha256: a JSON map from every other protospect.* key
    to the first 16 hex digits of the sha256 of its value, so a reader can name the key that was edited."""
    digests = {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in sorted(_prefixed(props).items())
               if k != METADATA_HASH}
    return json.dumps(digests, sort_keys=True, separators=(",", ":"))


def with_metadata_hash(props: dict) -> dict:
    """``props`` (prefixed keys) with protospect.metadata_sha256 set over the others."""
    out = {k: v for k, v in props.items() if k != METADATA_HASH}
    out[METADATA_HASH] = metadata_sha256(out)
    return out


def check_metadata_hash(props: dict, where) -> None:
    """Refuse metadata edited after export (e.g. a raised or negative threshold), naming the key, or exported
    before the hash existed (re-export)."""
    mine = _prefixed(props)
    stored = mine.get(METADATA_HASH)
    if stored is None:
        raise ArtifactError(f"{where} lacks {METADATA_HASH} (exported before metadata hashes, or its metadata was "
                            "rewritten): re-export it with `protospect export`")
    try:
        recorded = json.loads(stored)
        if not isinstance(recorded, dict):
            raise ValueError
    except ValueError:
        raise ArtifactError(f"{where} has a malformed {METADATA_HASH}: re-export it with `protospect export`") from None
    now = json.loads(metadata_sha256(mine))
    changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
    if changed:
        how = ", ".join(f"{k} ({'added' if k not in recorded else 'removed' if k not in now else 'edited'})"
                        for k in changed)
        raise ArtifactError(f"{where}: {how} after export (does not match {METADATA_HASH}); the graph's metadata "
                            "must not be edited: re-export it with `protospect export`")


def bank_sha256(bank: np.ndarray) -> str:
    """sha256 of the bank's float32 C-order bytes: export stores it as protospect.bank_sha256 in the split
    graphs, and the runtime hashes bank.npy the same way before it trusts it."""
    return hashlib.sha256(np.ascontiguousarray(bank, dtype=np.float32).tobytes()).hexdigest()
