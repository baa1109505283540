"""Reuse frozen-backbone features across fits during evaluation.

An evaluation scores the same test images once per (K, seed): with a frozen backbone their features
never change, yet they dominated evaluation time (12 backbone passes per test image for 4 K x 3 seeds).
Inside ``memoize_features()``, FrozenBackbone.forward looks features up by (weights fingerprint, input
bytes), so a hit is exact by construction: the same weights on the same pixels. Outside the context
nothing is cached (training never sees it: its pseudo-anomalies differ every step).
"""
from __future__ import annotations

import contextlib
import hashlib

import torch

class FeatureStore:
    """Holds cached features for one evaluation; bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = 3 << 30):
        self.entries: dict = {}
        self.budget = max_bytes


_active: FeatureStore | None = None


@contextlib.contextmanager
def memoize_features(store: FeatureStore | None = None):
    """Serve frozen-backbone outputs from ``store`` (a fresh one if None) until the context exits.

    Pass the same store to several contexts (one per scoring pass) so later fits hit earlier entries
    while the training passes in between stay uncached.
    """
    global _active
    outer = _active
    _active = store if store is not None else FeatureStore()
    try:
        yield _active
    finally:
        _active = outer


def _digest(t: torch.Tensor) -> bytes:
    return hashlib.blake2b(t.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).digest()


def weights_fingerprint(module: torch.nn.Module) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.digest()


def lookup(backbone, x: torch.Tensor, compute):
    """compute(x) through the cache when a memoize_features() context is active."""
    if _active is None or torch.is_grad_enabled():
        return compute(x)
    fp = getattr(backbone, "_weights_fp", None)
    if fp is None:
        fp = backbone._weights_fp = weights_fingerprint(backbone)
    key = (fp, tuple(x.shape), str(x.dtype), _digest(x))
    hit = _active.entries.get(key)
    if hit is not None:
        return [f.clone() for f in hit]
    feats = compute(x)
    size = sum(f.numel() * f.element_size() for f in feats)
    if size <= _active.budget:
        _active.entries[key] = [f.detach().clone() for f in feats]
        _active.budget -= size
    return feats
