"""A line-by-line numpy model of the kernel's selection logic (proto_topk.cuh), checked against the
reference on CPU: tile order, the fill phase, unordered appends within a tile, the strict
`s < threshold` filter with ties, the compaction rule, the radix passes (from the highest differing
bit) with the index tie pass, buffer bounds and the merge of the splits' buffers. It cannot find CUDA
bugs (indexing, barriers); it does check the algorithm those lines implement, here, without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
from topk_cases import make_case, make_tie_case

from protospect.cpp_ext import reference
from protospect.cpp_ext.kernel_config import CONFIG as C
from protospect.cpp_ext.kernel_config import cand_cap

TILE_M = {"float32": C["kBlockM"], "float16": C["kMmaBlockM"]}  # proto_topk_config.h
MAX_SPLITS = C["kMaxSplits"]
SENTINEL = C["kSentinelIdx"]


def _sorted_pairs(vals, idx):
    order = np.lexsort((idx, vals))  # value, then index
    return vals[order], idx[order]


def _order_key(v):
    """order_key in proto_topk.cuh: float32 -> order-preserving uint32 (-0 folded onto +0)."""
    b = np.asarray(v, np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    b[b == 0x80000000] = 0
    return np.where(b & 0x80000000, ~b & 0xFFFFFFFF, b | 0x80000000).astype(np.uint64)


def _radix_kth(keys, need):
    """The need-th smallest of `keys` by radix passes of up to 8 bits from the highest bit where the
    keys differ (select_row; radix_pick per pass), and its rank among the equal keys."""
    kmin, kmax = int(keys.min()), int(keys.max())
    top = (kmin ^ kmax).bit_length() - 1  # -1: all keys equal
    mask = 0xFFFFFFFF if top < 0 else ~((2 << top) - 1) & 0xFFFFFFFF
    prefix = kmin & mask
    for hi in range(top, -1, -8):
        shift = max(hi - 7, 0)
        digit = (2 << (hi - shift)) - 1
        match = (keys & mask) == prefix
        hist = np.bincount(((keys[match] >> shift) & digit).astype(np.int64), minlength=256)
        cum = np.cumsum(hist)
        b = int(np.searchsorted(cum, need))  # first bin whose cumulative count reaches need
        need -= int(cum[b - 1]) if b > 0 else 0
        prefix |= b << shift
        mask |= digit << shift
    assert mask == 0xFFFFFFFF
    return prefix, need


def _select(cand_v, cand_i, k):
    """select_row: radix select of the k-th smallest key, then (only if it is tied) of the need-th
    smallest index among the tied entries; keep smaller keys and tied ones up to that index, in
    buffer order. The buffer may be in any order."""
    keys = _order_key(cand_v)
    prefix, need = _radix_kth(keys, k)
    eq = keys == prefix
    cut = 0xFFFFFFFF
    if eq.sum() > need:
        cut, _ = _radix_kth(cand_i[eq].astype(np.uint64), need)
    keep = (keys < prefix) | (eq & (cand_i.astype(np.uint64) <= cut))
    assert keep.sum() == k
    return cand_v[keep], cand_i[keep], np.float32(cand_v[eq][0])  # key_value(prefix): the k-th value


def _partial(scores_row, m_begin, m_end, k, dtype, rng, stats=None):
    """One query row over one split (partial_topk_*_body): its candidate buffer at the end (<= cap entries,
    a superset of the split's k smallest), which a single split then selects from and several hand to
    the merge kernel."""
    tile = TILE_M[dtype]
    if k == 1 and dtype == "float16":  # running (value, index) minimum in registers: a one-slot buffer
        v, i = _sorted_pairs(scores_row[m_begin:m_end], np.arange(m_begin, m_end))
        return v[:1], i[:1]
    cap = cand_cap(k)
    cand_v, cand_i = np.empty(0, np.float32), np.empty(0, np.int64)
    thr = np.inf
    for m0 in range(m_begin, m_end, tile):
        nm = min(tile, m_end - m0)
        s = scores_row[m0:m0 + nm]
        keep = (s < thr) | (thr == np.inf)
        new_v, new_i = s[keep], np.arange(m0, m0 + nm)[keep]
        if dtype == "float16" and thr != np.inf:  # appends through shared atomics: any order within the tile
            order = rng.permutation(len(new_v))
            new_v, new_i = new_v[order], new_i[order]
        cand_v, cand_i = np.concatenate([cand_v, new_v]), np.concatenate([cand_i, new_i])
        assert len(cand_v) <= cap, "a tile overflowed the candidate buffer"
        if len(cand_v) + tile > cap and m0 + tile < m_end:  # compaction, only when another tile follows
            assert len(cand_v) > k
            dropped = len(cand_v) - k
            cand_v, cand_i, thr = _select(cand_v, cand_i, k)
            assert dropped >= C["kCandSlack"] or dropped >= cap - tile - k + 1
            if stats is not None:
                stats["compactions"] += 1
    return cand_v, cand_i


BOUND_TILES, BOUND_RANKS, ATOM_WEIGHT = C["kBoundTiles"], C["kBoundRanks"], C["kAtomWeight"]  # proto_topk_config.h


def _tile_atoms(s):
    """The atoms one fp16 tile row publishes in the shared-bound build: 16 groups of 8 columns, group
    (wm, t4) = columns wm*32 + 8j + 2*t4 + e (j < 4, e < 2): one thread's in the mma.sync layout, a quarter
    of lane t4's 32 in the wgmma layout; per rank r, the max over the groups of each one's r-th smallest
    valid score (+inf where a group has fewer than r)."""
    atoms = []
    for r in range(1, BOUND_RANKS + 1):
        worst = -np.inf
        for wm in range(4):
            for t4 in range(4):
                cols = [c for c in (wm * 32 + 8 * j + 2 * t4 + e for j in range(4) for e in range(2)) if c < len(s)]
                mine = np.sort(s[cols]) if cols else np.empty(0, np.float32)
                worst = max(worst, mine[r - 1] if len(mine) >= r else np.inf)
        atoms.append(np.float32(worst))
    return atoms


def _atoms_bound(atoms, k):
    """atoms_bound_key: the ceil(k / 16)-th smallest of a query's 32 atom slots (unpublished ones +inf)."""
    slots = np.full(MAX_SPLITS * BOUND_TILES * BOUND_RANKS, np.inf, np.float32)
    slots[:len(atoms)] = atoms
    return np.sort(slots)[-(-k // ATOM_WEIGHT) - 1]


def _partials_shared_bound(scores_row, segs, k, rng, stats, strict=False):
    """All splits of one query row in the shared-bound build (fp16, k > 1), tile by tile: each split
    filters with its own threshold and the shared bound (s <= bound: ties kept), compacts as _partial
    does, publishes its atoms after its first BOUND_TILES tiles and then takes the ceil(k / 16)-th
    smallest atom it can see as a bound. Which other splits' atoms a split sees is random: blocks run
    unsynchronised, and the kernel must be exact whatever subset (stale, unpublished) it reads.
    strict: filter with s < bound instead (wrong with ties: the tests show the model can tell)."""
    tile, cap = TILE_M["float16"], cand_cap(k)
    st = [dict(v=np.empty(0, np.float32), i=np.empty(0, np.int64), thr=np.inf, bound=np.inf) for _ in segs]
    published = {}  # (split, tile, rank) -> atom value
    for t in range(max(-(-(e - b) // tile) for b, e in segs)):
        for sp in rng.permutation(len(segs)):  # blocks in no particular order
            (m_begin, m_end), x = segs[sp], st[sp]
            m0 = m_begin + t * tile
            if m0 >= m_end:
                continue
            nm = min(tile, m_end - m0)
            s = scores_row[m0:m0 + nm]
            if x["thr"] == np.inf and x["bound"] == np.inf:  # filling: every score to its column's slot
                keep = np.ones(nm, bool)
            else:
                keep = (s < x["thr"]) & ((s < x["bound"]) if strict else (s <= x["bound"]))
            order = rng.permutation(int(keep.sum()))  # appends: any order within the tile
            x["v"] = np.concatenate([x["v"], s[keep][order]])
            x["i"] = np.concatenate([x["i"], np.arange(m0, m0 + nm)[keep][order]])
            stats["written"] += int(keep.sum())
            assert len(x["v"]) <= cap, "a tile overflowed the candidate buffer"
            more = m0 + tile < m_end
            if len(x["v"]) + tile > cap and more:
                x["v"], x["i"], x["thr"] = _select(x["v"], x["i"], k)
            if not more:
                continue
            if t < BOUND_TILES:
                for r, a in enumerate(_tile_atoms(s)):
                    published[(sp, t, r)] = a
            seen = [a for (owner, _, _), a in published.items() if owner == sp or rng.random() < 0.7]
            x["bound"] = min(x["bound"], _atoms_bound(seen, k))
            stats["bounded"] += int(x["bound"] < np.inf)
    # level 2: the merge drops entries above the bound from every published atom (all are, by then)
    stats["final_bound"] = float(_atoms_bound(list(published.values()), k))
    return [(x["v"], x["i"]) for x in st]


def _finish(v, i, k, qn):
    """finish_row (one split) / the merge kernel (several): select k, sort, add |q|^2, clamp, pad."""
    if len(v) > k:
        v, i, _ = _select(v, i, k)
    v, i = _sorted_pairs(v, i)
    pad = k - len(v)
    v = np.concatenate([v, np.full(pad, np.inf, np.float32)])
    i = np.concatenate([i, np.full(pad, SENTINEL)])
    return np.maximum(v[:k] + qn, 0), np.where(i[:k] == SENTINEL, -1, i[:k])


def model_knn(queries, bank, k, splits, dtype="float16", seed=0, shared_bound=False, stats=None, strict=False):
    """The kernel's result on CPU; shared_bound: the -DPROTOSPECT_TOPK_SHARED_BOUND build (fp16, k > 1,
    several splits), whose scores written and bounded tiles are counted in `stats`."""
    rng = np.random.default_rng(seed)
    stats = {"written": 0, "bounded": 0} if stats is None else stats
    q, b = queries.astype(np.float32), bank.astype(np.float32)
    scores = ((b * b).sum(1)[None, :] - 2.0 * (q @ b.T)).astype(np.float32)
    qn = (q * q).sum(1)
    M, tile = b.shape[0], TILE_M[dtype]
    seg = -(-(-(-M // tile)) // splits) * tile  # segment_length in proto_topk.cu
    splits = -(-M // seg)
    dist, idx = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    for r in range(len(q)):
        segs = [(s * seg, min(M, (s + 1) * seg)) for s in range(splits)]
        if shared_bound and dtype == "float16" and k > 1 and splits > 1:
            parts = _partials_shared_bound(scores[r], segs, k, rng, stats, strict)
        else:
            parts = [_partial(scores[r], b, e, k, dtype, rng) for b, e in segs]
        v, i = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])  # union of the buffers
        if "final_bound" in stats:  # shared-bound build, level 2: the merge skips entries above the final bound
            keep = v <= stats.pop("final_bound")
            stats["merged"] = stats.get("merged", 0) + int(keep.sum())
            v, i = v[keep], i[keep]
        order = rng.permutation(len(v))  # the merge reads them in no particular order
        dist[r], idx[r] = _finish(v[order], i[order], k, qn[r])
    return dist, idx


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("splits", [1, 3, MAX_SPLITS])
@pytest.mark.parametrize("Q,M,D,k", [(6, 700, 5, 256), (5, 300, 7, 1), (4, 130, 3, 130), (5, 1000, 4, 64)])
def test_model_with_exact_ties_equals_reference(Q, M, D, k, splits, dtype):
    queries, bank = make_tie_case(Q, M, D, seed=k)
    dist, idx = model_knn(queries, bank, k, splits, dtype)
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, k, return_indices=True)
    np.testing.assert_array_equal(dist, ref_dist)
    np.testing.assert_array_equal(idx, ref_idx)


@pytest.mark.parametrize("values", [[3.0] * 50, [1.0, -1.0, 0.0, -0.0, 7.5, 1e-30, -1e30, 1e30] * 9,
                                    list(np.linspace(1700, 1900, 300))])
def test_radix_select_finds_every_rank(values):
    keys = _order_key(np.array(values, np.float32))
    ordered = np.sort(keys)
    for need in range(1, len(keys) + 1, 7):
        kth, rank = _radix_kth(keys, need)
        assert kth == ordered[need - 1]
        assert rank == need - int((keys < kth).sum())


def test_select_breaks_value_ties_on_the_index_whatever_the_buffer_order():
    rng = np.random.default_rng(3)
    vals = np.array([1.0] * 40 + [0.5] * 3 + [2.0] * 20, np.float32)
    ids = np.arange(len(vals)) * 7 + 11
    order = rng.permutation(len(vals))
    kept_v, kept_i, kth = _select(vals[order], ids[order], k=10)
    assert kth == 1.0
    assert sorted(kept_i.tolist()) == sorted(ids[40:43].tolist() + ids[:7].tolist())  # the 7 smallest tied indices


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_model_on_random_data_matches_reference(dtype):
    queries, bank = make_case(8, 2100, 24, seed=1)
    dist, idx = model_knn(queries, bank, 200, splits=1, dtype=dtype)
    stats = {"compactions": 0}
    q, b = queries[0], bank
    _partial((b * b).sum(1) - 2.0 * (b @ q), 0, 2100, 200, dtype, np.random.default_rng(0), stats)
    assert 1 <= stats["compactions"] <= 6  # about 1 + ln(M / k) selections per query, not one per tile
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, 200, return_indices=True)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-3)
    assert (idx == ref_idx).mean() > 0.99  # fp32 scores: a rare near-tie may swap two neighbours


@pytest.mark.parametrize("Q,M,D,k", [(3, 4096, 5, 256), (3, 4096, 3, 64), (3, 4096, 4, 17), (3, 4096, 6, 200),
                                     (2, 3000, 4, 100), (3, 4096, 8, 2)])
def test_shared_bound_model_with_exact_ties_equals_reference(Q, M, D, k):
    """The -DPROTOSPECT_TOPK_SHARED_BOUND build's algorithm (atoms, bound, `<=` filter) on coarse-grid data
    where many scores tie across the bound, with random visibility of the other splits' atoms."""
    queries, bank = make_tie_case(Q, M, D, seed=k)
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, k, return_indices=True)
    for seed in range(3):
        stats = {"written": 0, "bounded": 0}
        dist, idx = model_knn(queries, bank, k, MAX_SPLITS, "float16", seed=seed, shared_bound=True, stats=stats)
        assert stats["bounded"] > 0 and stats["written"] < Q * M  # the bound took part and dropped scores
        np.testing.assert_array_equal(dist, ref_dist)
        np.testing.assert_array_equal(idx, ref_idx)


def test_shared_bound_model_fails_with_a_strict_filter_on_ties():
    """The model can tell a wrong filter: with every score equal the bound equals the k-th score once a split
    sees ceil(k / 16) atoms, and `s < bound` then drops split 0's second tile, which holds part of the k
    (k = 140: indices 0 .. 139, tile 0 is 0 .. 127)."""
    queries, bank = np.ones((2, 4), np.float32), np.ones((4096, 4), np.float32)
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, 140, return_indices=True)
    exact = []
    for seed in range(4):
        for strict in (False, True):
            dist, idx = model_knn(queries, bank, 140, MAX_SPLITS, "float16", seed=seed, shared_bound=True,
                                  strict=strict)
            exact.append((strict, np.array_equal(dist, ref_dist) and np.array_equal(idx, ref_idx)))
    assert all(ok for strict, ok in exact if not strict)
    assert not all(ok for strict, ok in exact if strict)


def test_shared_bound_model_writes_fewer_candidates_at_large_k():
    """PCSNet's case in small: k = 200 over 8 splits of 512 prototypes, where a split's own threshold
    never filters (every score written). The shared bound must drop a large share, exactly."""
    queries, bank = make_case(4, 4096, 32, seed=5)
    plain, shared = {"written": 0, "bounded": 0}, {"written": 0, "bounded": 0}
    model_knn(queries, bank, 200, MAX_SPLITS, "float16", shared_bound=False, stats=plain)
    dist, idx = model_knn(queries, bank, 200, MAX_SPLITS, "float16", shared_bound=True, stats=shared)
    ref_dist, ref_idx = reference.knn_sqdist(queries, bank, 200, return_indices=True)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-3)
    assert (idx == ref_idx).mean() > 0.99
    assert shared["bounded"] > 0
    assert shared["written"] < 0.8 * 4 * 4096, shared  # 72 % here (D = 32); the study's data: ~57 %
    assert shared["merged"] < shared["written"]  # level 2: the merge selects from fewer still
