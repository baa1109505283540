"""CPU reference for the fused kernel: the k smallest squared L2 distances per query, in float64.

Same contract as the CUDA kernel (docs/contracts.md section 8): ascending distances, ties broken by
the smaller prototype index, clamped at 0. Queries are processed in chunks so the distance block
held in memory stays bounded whatever Q is.
"""
from __future__ import annotations

import numpy as np

from protospect.errors import ConfigError

_CHUNK_BYTES = 64 << 20  # float64 distance block per chunk of queries


def _check(queries: np.ndarray, bank: np.ndarray, k: int) -> None:
    if queries.ndim != 2 or bank.ndim != 2:
        raise ConfigError(
            f"knn_sqdist expects queries (Q, D) and bank (M, D), got {queries.shape} and {bank.shape}; "
            "reshape to 2-D first"
        )
    if queries.shape[1] != bank.shape[1]:
        raise ConfigError(
            f"query dim {queries.shape[1]} != prototype dim {bank.shape[1]}; both must come from the same features"
        )
    if not 1 <= k <= bank.shape[0]:
        raise ConfigError(f"k={k} must be in [1, {bank.shape[0]}] (the number of prototypes)")


def _smallest_k_rows(dist: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k smallest entries of each row, ascending, ties -> smaller index."""
    if k < dist.shape[1]:
        # Every entry <= the k-th value is a candidate (this keeps all ties at the boundary),
        # then an exact (value, index) sort decides.
        kth = np.partition(dist, k - 1, axis=1)[:, k - 1 : k]
        out = np.empty((dist.shape[0], k), dtype=np.int64)
        for r in range(dist.shape[0]):
            cand = np.flatnonzero(dist[r] <= kth[r, 0])
            order = np.lexsort((cand, dist[r, cand]))  # last key is primary: value, then index
            out[r] = cand[order[:k]]
        return out
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def knn_sqdist(queries: np.ndarray, bank: np.ndarray, k: int, return_indices: bool = False):
    """(Q, D) x (M, D) -> float32 (Q, k) squared distances, and int32 (Q, k) indices if asked.

    Accumulates in float64 through ||q||^2 + ||m||^2 - 2 q.m, clamped at 0 (the true distance is never
    negative). NaN distances (from NaN inputs) rank last, as in the kernel.
    """
    queries = np.asarray(queries)
    bank = np.asarray(bank)
    _check(queries, bank, k)
    q64 = queries.astype(np.float64)
    b64 = bank.astype(np.float64)
    bank_sq = np.einsum("md,md->m", b64, b64)
    n_q, n_m = q64.shape[0], b64.shape[0]
    dist_out = np.empty((n_q, k), dtype=np.float32)
    idx_out = np.empty((n_q, k), dtype=np.int32)
    chunk = max(1, _CHUNK_BYTES // (8 * n_m))
    for start in range(0, n_q, chunk):
        q = q64[start : start + chunk]
        d = np.einsum("qd,qd->q", q, q)[:, None] + bank_sq[None, :] - 2.0 * (q @ b64.T)
        np.maximum(d, 0.0, out=d)
        d[np.isnan(d)] = np.inf
        if not return_indices:
            # Values only (the runtime's CPU split path): tie order cannot change them, so skip the
            # per-row (value, index) sort; partition + sort is ~100x faster at 4096 x 2048.
            part = np.partition(d, k - 1, axis=1)[:, :k] if k < n_m else d
            dist_out[start : start + chunk] = np.sort(part, axis=1)
            continue
        idx = _smallest_k_rows(d, k)
        dist_out[start : start + chunk] = np.take_along_axis(d, idx, axis=1)
        idx_out[start : start + chunk] = idx
    return (dist_out, idx_out) if return_indices else dist_out
