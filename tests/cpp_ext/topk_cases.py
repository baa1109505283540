"""Shared problem cases for the top-k tests: every path is checked on the same data."""
from __future__ import annotations

import numpy as np

# (Q, M, D, k): odd D, Q and M not multiples of the 64 x 64 (fp32) or 128 x 128 (fp16) tile, k = 1,
# k = M, k = 256, M < tile, and two shapes with many tiles per split (fp16 pipeline across tiles,
# several compactions per query).
SHAPES = [
    (1, 1, 1, 1),
    (5, 7, 3, 7),          # k = M, everything smaller than one tile
    (70, 130, 37, 1),      # k = 1, odd D, partial tiles on both axes
    (129, 300, 64, 20),
    (64, 256, 33, 256),    # k = M = kernel max
    (200, 1000, 152, 64),  # PCSNet-like dim, several splits on a big GPU
    (33, 2000, 9, 200),    # large k relative to one tile: several merges per query
    (300, 3000, 256, 200), # aligned fp16 rows (cp.async path), many tiles and compactions
    (257, 5000, 96, 1),    # k = 1 over many tiles, Q one past two fp16 query tiles
]


def make_case(Q: int, M: int, D: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 queries and bank on different scales (distances well away from 0)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((Q, D)).astype(np.float32), (0.5 * rng.standard_normal((M, D))).astype(np.float32)


def make_tie_case(Q: int, M: int, D: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer data with duplicated prototypes: every distance is an exact integer in fp16 and
    fp32 arithmetic, and many are equal, so the tie rule (smaller index first) decides the output."""
    rng = np.random.default_rng(seed)
    distinct = rng.integers(-2, 3, size=(max(1, M // 3), D))
    bank = distinct[rng.integers(0, distinct.shape[0], size=M)]  # repeats -> exact ties
    queries = rng.integers(-2, 3, size=(Q, D))
    return queries.astype(np.float32), bank.astype(np.float32)


def brute_force(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Exact (Q, M) squared distances in float64 by direct differences (not the GEMM form)."""
    b = bank.astype(np.float64)[None, :, :]
    out = np.empty((queries.shape[0], bank.shape[0]))
    for s in range(0, queries.shape[0], 16):  # chunks keep the (chunk, M, D) block small
        q = queries[s : s + 16].astype(np.float64)[:, None, :]
        out[s : s + 16] = ((q - b) ** 2).sum(-1)
    return out


def distances_at(queries: np.ndarray, bank: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Exact float64 squared distance of each query to the prototypes idx[q] names."""
    diff = queries.astype(np.float64)[:, None, :] - bank.astype(np.float64)[idx]
    return (diff**2).sum(-1)


def assert_topk_close(dist, idx, queries, bank, ref_dist, ref_idx, rtol, atol, exact_indices=False):
    """Checks one result against the references.

    dist sorted ascending and close to the reference; every returned index distinct, in range, and its
    true distance close to the returned one (so a near-tie may swap indices, never pick a wrong
    prototype); indices identical to the reference when exact_indices (exact arithmetic cases).
    """
    dist = np.asarray(dist, np.float64)
    idx = np.asarray(idx)
    assert dist.shape == ref_dist.shape and idx.shape == ref_idx.shape
    assert np.all(np.diff(dist, axis=1) >= 0), "distances not ascending"
    np.testing.assert_allclose(dist, ref_dist, rtol=rtol, atol=atol)
    assert idx.min() >= 0 and idx.max() < bank.shape[0]
    assert all(len(set(row)) == len(row) for row in idx.tolist()), "an index repeats within a row"
    true = distances_at(queries, bank, idx)
    np.testing.assert_allclose(dist, true, rtol=rtol, atol=atol)
    if exact_indices:
        np.testing.assert_array_equal(idx, ref_idx)
