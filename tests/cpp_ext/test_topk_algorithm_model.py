"""A line-by-line numpy model of the kernel's selection logic (proto_topk.cuh), checked against the
reference on CPU: tile order, the strict `s < threshold` filter with ties, the flush rule and its
buffer bounds, split padding and the split merge. It cannot find CUDA bugs (indexing, barriers);
it does check the algorithm those lines implement, here, without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
from topk_cases import make_case, make_tie_case

from protospect.cpp_ext import reference

BLOCK_M, CAND_CAP, STAGING_CAP, MAX_SPLITS = 64, 128, 256, 8  # proto_topk.cuh constants
SENTINEL = 0x7FFFFFFF


def _sorted_pairs(vals, idx):
    order = np.lexsort((idx, vals))  # value, then index
    return vals[order], idx[order]


def _count_before(vals, idx, v, i):
    """count_before in proto_topk.cuh: binary search for the entries ordering before (v, i)."""
    lo, hi = 0, len(vals)
    while lo < hi:
        mid = (lo + hi) // 2
        if vals[mid] < v or (vals[mid] == v and idx[mid] < i):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _partial(scores_row, m_begin, m_end, k):
    """partial_topk_body for one query row over one split; returns the padded sorted list."""
    list_v, list_i = np.empty(0, np.float32), np.empty(0, np.int64)
    cand_v, cand_i = [], []
    thr = np.inf

    def flush():
        """flush_candidates: sort the buffer, then place every entry by rank (a permutation)."""
        nonlocal list_v, list_i, thr, cand_v, cand_i
        assert len(cand_v) <= CAND_CAP and len(list_v) <= STAGING_CAP
        new_v, new_i = _sorted_pairs(np.float32(cand_v), np.int64(cand_i))
        keep = min(k, len(list_v) + len(new_v))
        out_v, out_i = np.full(keep, np.nan, np.float32), np.full(keep, -1, np.int64)
        for mine, other in (((list_v, list_i), (new_v, new_i)), ((new_v, new_i), (list_v, list_i))):
            for j in range(len(mine[0])):
                pos = j + _count_before(other[0], other[1], mine[0][j], mine[1][j])
                if pos < keep:
                    assert out_i[pos] == -1, "two entries ranked into one place"
                    out_v[pos], out_i[pos] = mine[0][j], mine[1][j]
        assert (out_i >= 0).all()
        list_v, list_i = out_v, out_i
        thr = list_v[k - 1] if keep == k else np.inf
        cand_v, cand_i = [], []

    for m0 in range(m_begin, m_end, BLOCK_M):
        filling = len(list_v) < k
        for c in range(min(BLOCK_M, m_end - m0)):
            s = scores_row[m0 + c]
            if filling or s < thr:
                cand_v.append(s)
                cand_i.append(m0 + c)
        assert len(cand_v) <= CAND_CAP
        if len(cand_v) > CAND_CAP - BLOCK_M:
            flush()
    if cand_v:
        flush()
    pad = k - len(list_v)
    return np.concatenate([list_v, np.full(pad, np.inf, np.float32)]), np.concatenate([list_i, np.full(pad, SENTINEL)])


def model_knn(queries, bank, k, splits):
    q, b = queries.astype(np.float32), bank.astype(np.float32)
    scores = ((b * b).sum(1)[None, :] - 2.0 * (q @ b.T)).astype(np.float32)
    qn = (q * q).sum(1)
    M = b.shape[0]
    seg = -(-(-(-M // BLOCK_M)) // splits) * BLOCK_M  # segment_length in proto_topk.cu
    splits = -(-M // seg)
    dist, idx = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    for r in range(len(q)):
        parts = [_partial(scores[r], s * seg, min(M, (s + 1) * seg), k) for s in range(splits)]
        v, i = _sorted_pairs(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        dist[r], idx[r] = np.maximum(v[:k] + qn[r], 0), i[:k]
    return dist, idx


@pytest.mark.parametrize("splits", [1, 3, MAX_SPLITS])
@pytest.mark.parametrize("Q,M,D,k", [(6, 700, 5, 256), (5, 300, 7, 1), (4, 130, 3, 130), (5, 1000, 4, 64)])
def test_model_with_exact_ties_equals_reference(Q, M, D, k, splits):
    queries, bank = make_tie_case(Q, M, D, seed=k)
    dist, idx = model_knn(queries, bank, k, splits)
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, k, return_indices=True)
    np.testing.assert_array_equal(dist, ref_dist)
    np.testing.assert_array_equal(idx, ref_idx)


def test_model_on_random_data_matches_reference():
    queries, bank = make_case(8, 2100, 24, seed=1)
    dist, idx = model_knn(queries, bank, 200, splits=1)
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, 200, return_indices=True)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-3)
    assert (idx == ref_idx).mean() > 0.99  # fp32 scores: a rare near-tie may swap two neighbours
