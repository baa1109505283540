"""A line-by-line numpy model of the kernel's selection logic (proto_topk.cuh), checked against the
reference on CPU: tile order, the strict `s < threshold` filter with ties, the compaction rule and its
radix select + stable partition, buffer bounds, split padding and the split merge. It cannot find CUDA bugs (indexing, barriers);
it does check the algorithm those lines implement, here, without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
from topk_cases import make_case, make_tie_case

from protospect.cpp_ext import reference

BLOCK_M, MAX_CAND_CAP, MAX_SPLITS = 64, 512, 8  # proto_topk.cuh constants
SENTINEL = 0x7FFFFFFF


def cand_cap(k):
    return min(2 * k + BLOCK_M, MAX_CAND_CAP)  # proto_topk.cuh cand_cap


def _sorted_pairs(vals, idx):
    order = np.lexsort((idx, vals))  # value, then index
    return vals[order], idx[order]


def _order_key(v):
    """order_key in proto_topk.cuh: float32 -> order-preserving uint32 (-0 folded onto +0)."""
    b = np.float32(v).reshape(1).view(np.uint32).astype(np.uint64)
    b[b == 0x80000000] = 0
    return np.where(b & 0x80000000, ~b & 0xFFFFFFFF, b | 0x80000000).astype(np.uint64)


def _select(cand_v, cand_i, k):
    """select_row: radix select of the k-th smallest key (8 bits per pass), then a stable partition
    keeping every smaller key and the first `need` equal ones; the buffer stays in prototype order."""
    keys = np.concatenate([_order_key(v) for v in cand_v]) if len(cand_v) else np.empty(0, np.uint64)
    prefix, mask, need = 0, 0, k
    for shift in (24, 16, 8, 0):
        match = (keys & mask) == prefix
        hist = np.bincount(((keys[match] >> shift) & 255).astype(np.int64), minlength=256)
        cum = np.cumsum(hist)
        b = int(np.searchsorted(cum, need))  # first bin whose cumulative count reaches need
        need -= int(cum[b - 1]) if b > 0 else 0
        prefix |= b << shift
        mask |= 255 << shift
    eq = keys == prefix
    keep = (keys < prefix) | (eq & (np.cumsum(eq) <= need))
    assert keep.sum() == k
    return cand_v[keep], cand_i[keep], np.float32(cand_v[eq][0])  # key_value(prefix): the k-th value


def _partial(scores_row, m_begin, m_end, k, stats=None):
    """partial_topk_body for one query row over one split; returns its k smallest (padded), sorted."""
    cap = cand_cap(k)
    cand_v, cand_i = np.empty(0, np.float32), np.empty(0, np.int64)
    thr = np.inf
    for m0 in range(m_begin, m_end, BLOCK_M):
        if len(cand_v) + BLOCK_M > cap:
            assert len(cand_v) > k
            cand_v, cand_i, thr = _select(cand_v, cand_i, k)
            assert (np.diff(cand_i) > 0).all(), "the buffer stays in prototype order"
            if stats is not None:
                stats["compactions"] += 1
        nm = min(BLOCK_M, m_end - m0)
        s = scores_row[m0:m0 + nm]
        keep = (s < thr) | (thr == np.inf)
        cand_v = np.concatenate([cand_v, s[keep]])
        cand_i = np.concatenate([cand_i, np.arange(m0, m0 + nm)[keep]])
        assert len(cand_v) <= cap, "a tile overflowed the candidate buffer"
    if len(cand_v) > k:
        cand_v, cand_i, _ = _select(cand_v, cand_i, k)
    cand_v, cand_i = _sorted_pairs(cand_v, cand_i)  # sort_row (one split) / the merge kernel (several)
    pad = k - len(cand_v)
    return np.concatenate([cand_v, np.full(pad, np.inf, np.float32)]), np.concatenate([cand_i, np.full(pad, SENTINEL)])


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
    stats = {"compactions": 0}
    q, b = queries[0], bank
    _partial((b * b).sum(1) - 2.0 * (b @ q), 0, 2100, 200, stats)
    assert 1 <= stats["compactions"] <= 4  # about 1 + ln(M / k) selections per query, not one per tile
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, 200, return_indices=True)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-3)
    assert (idx == ref_idx).mean() > 0.99  # fp32 scores: a rare near-tie may swap two neighbours
