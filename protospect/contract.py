"""The graph contract that export writes and every reader checks (docs/contracts.md 6), in one place.

Here, not in export or runtime: export writes these values and the torch-free runtime checks them,
and the runtime imports nothing from export. Only numpy and the standard library.
"""
from __future__ import annotations

import hashlib

import numpy as np

from protospect.errors import ArtifactError

PREFIX = "protospect."
FORMAT_VERSION = "1"
INPUT_LAYOUT = "NHWC-uint8-RGB"


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


def bank_sha256(bank: np.ndarray) -> str:
    """sha256 of the bank's float32 C-order bytes: export stores it as protospect.bank_sha256 in the split
    graphs, and the runtime hashes bank.npy the same way before it trusts it."""
    return hashlib.sha256(np.ascontiguousarray(bank, dtype=np.float32).tobytes()).hexdigest()
