"""The graph contract that export writes and every reader checks (docs/contracts.md 6), in one place.

Here, not in export or runtime: export writes these values and the torch-free runtime checks them,
and the runtime imports nothing from export. Only numpy and the standard library.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from protospect.errors import ArtifactError

PREFIX = "protospect."
FORMAT_VERSION = "1"
INPUT_LAYOUT = "NHWC-uint8-RGB"
METADATA_HASH = PREFIX + "metadata_sha256"  # {key: sha256(value)[:16]} of every other protospect.* key


def check_contract(props: dict, where) -> None:
    """Refuse metadata of another format version or input layout (found vs expected), or none at all.

    ``props``: the graph's metadata, keys with or without the ``protospect.`` prefix.
    """
    if not props:
        raise ArtifactError(f"{where} carries no protospect.* metadata; export it with `protospect export`")
    for key, want in (("format_version", FORMAT_VERSION), ("input_layout", INPUT_LAYOUT)):
        found = props.get(PREFIX + key, props.get(key))
        if found is None:
            raise ArtifactError(f"{where} lacks {PREFIX}{key} ({key} none but this protospect reads {want!r}); "
                                "it was not written by `protospect export` (re-export the artifact)")
        if str(found) != want:
            raise ArtifactError(f"{where} has {PREFIX}{key} {str(found)!r} but this protospect reads {want!r}; "
                                "re-export it with this protospect (`protospect export`)")
    check_metadata_hash(props, where)


def _prefixed(props: dict) -> dict[str, str]:
    """The protospect.* keys of ``props``; a dict written without the prefix counts whole (check_contract's rule)."""
    if any(k.startswith(PREFIX) for k in props):
        return {k: str(v) for k, v in props.items() if k.startswith(PREFIX)}
    return {PREFIX + k: str(v) for k, v in props.items()}


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
